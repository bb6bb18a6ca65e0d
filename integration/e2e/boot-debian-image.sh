#!/usr/bin/env bash
# Boots Dragonfly's Debian 12 image (packaging/images/debian-12.sh) in QEMU (TCG) under
# legacy BIOS (SeaBIOS) and UEFI (OVMF), and proves cloud-init configured it: SSH login with a
# key from the NoCloud seed, the seed's host name, `cloud-init status --wait` done, the root
# grown to the disk. Prints each phase's time: what a CI budget needs to know.
#
#   integration/e2e/boot-debian-image.sh [--firmware bios|uefi|both] [--seedfrom]
#                                        [--image FILE.raw.zst] [--keep]
#
#   --firmware  which boots (default both, BIOS first)
#   --seedfrom  one more boot (BIOS), seeded the way Dragonfly provisions: no cidata volume,
#               but /etc/cloud/cloud.cfg.d/90-dragonfly.cfg written into the image's root
#               (debugfs, as a template's writefile would) with NoCloud's
#               seedfrom: http://10.0.2.2:<port>/metadata/<secret>/, served from the host's
#               loopback (python3 -m http.server; meta-data, user-data, an empty
#               vendor-data), and a network-config v2 (static address, the NIC renamed
#               dfnet0) under its `network:` key; prints what cloud-init fetched
#   --image     the compressed image; default debian-12-amd64.raw.zst in $DRAGONFLY_IMAGE_CACHE
#               (else /var/cache/dragonfly/images), next to its .sha256 and .json manifest
#   --keep      keep the work directory (serial logs, overlays) and print its path
#
# Each boot: a qcow2 overlay (4 GiB, so growpart has room) over the raw image, decompressed
# once and checked against the manifest's sha256; a NoCloud seed on a cidata ISO (meta-data:
# a fresh instance-id and local-hostname "debtest"; user-data: the public half of a
# throwaway ed25519 key); user-mode networking with SSH forwarded from 127.0.0.1 only;
# q35, 2 vCPUs, 1536 MiB (VM_CPUS, VM_MEMORY_MIB) as in the provisioning tests. The serial console,
# timestamped from QEMU's start, is WORK/serial-<firmware>.log. QEMU runs under `timeout`
# (BOOT_TIMEOUT, default 900 s) and is killed on every exit path.
#
# No root needed (but packaging/deps.sh installs the os group's packages when missing, which
# takes root or sudo). Exit 0 when every boot passed, 1 when one failed, 2 for bad usage or
# a missing image.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

usage() { # EXIT_CODE: the header above, on stdout for --help, else on stderr.
    local fd=2
    [ "$1" -ne 0 ] || fd=1
    sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}" >&"$fd"
    exit "$1"
}

FIRMWARES=(bios uefi)
SEEDFROM=0
IMAGE=${DRAGONFLY_IMAGE_CACHE:-/var/cache/dragonfly/images}/debian-12-amd64.raw.zst
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
        --firmware)
            [ $# -ge 2 ] || usage 2
            case $2 in
                both) FIRMWARES=(bios uefi) ;;
                bios | uefi) FIRMWARES=("$2") ;;
                *) echo "$0: --firmware bios|uefi|both" >&2; usage 2 ;;
            esac
            shift
            ;;
        --image) [ $# -ge 2 ] || usage 2; IMAGE=$2; shift ;;
        --seedfrom) SEEDFROM=1 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage 0 ;;
        *) echo "$0: unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
CPUS=${VM_CPUS:-2}
MEMORY=${VM_MEMORY_MIB:-1536}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
MANIFEST=${IMAGE%.raw.zst}.json
if [ ! -f "$IMAGE" ] || [ ! -f "$MANIFEST" ] || [ ! -f "$IMAGE.sha256" ]; then
    echo "$0: no image at $IMAGE (with .sha256 and ${MANIFEST##*/});" \
        "build it: sudo packaging/images/debian-12.sh" >&2
    exit 2
fi

# shellcheck source=packaging/deps.sh
. "$REPO/packaging/deps.sh"
deps_install os

say() { echo "boot-debian: $*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

W=$(mktemp -d "${TMPDIR:-/tmp}/boot-debian.XXXXXX")
QEMU_PID=
HTTP_PID=
stop_http() {
    [ -n "$HTTP_PID" ] || return 0
    kill "$HTTP_PID" 2>/dev/null || true
    wait "$HTTP_PID" 2>/dev/null || true
    HTTP_PID=
}
stop_qemu() {
    [ -n "$QEMU_PID" ] || return 0
    kill "$QEMU_PID" 2>/dev/null || true
    # timeout(1) passes the TERM on to QEMU and is gone within its --kill-after.
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
}
# shellcheck disable=SC2317 # the EXIT trap's
cleanup() {
    local rc=$?
    set +e
    stop_qemu
    stop_http
    if [ "$KEEP" -eq 1 ]; then
        say "kept $W"
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the image, once -----------------------------------------------------------------------
t=$(now)
(cd "$(dirname "$IMAGE")" && sha256sum --quiet -c "${IMAGE##*/}.sha256") ||
    { say "$IMAGE does not match its .sha256"; exit 1; }
RAW=$W/debian-12-amd64.raw
zstd -q -d --sparse "$IMAGE" -o "$RAW"
want=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["sha256"])' "$MANIFEST")
have=$(sha256sum "$RAW" | cut -d' ' -f1)
[ "$have" = "$want" ] || { say "decompressed image: sha256 $have, manifest says $want"; exit 1; }
say "image: $IMAGE, decompressed and checked in $(secs "$t" "$(now)") s"

ssh-keygen -q -t ed25519 -N '' -C dragonfly-boot-test -f "$W/id_ed25519"
SSH=(ssh -i "$W/id_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# log_time LOG PATTERN: the timestamp (seconds from QEMU's start) of the first serial line
# matching PATTERN (grep -E), or "-".
log_time() {
    awk -v re="$2" '$0 ~ re { sub(/^ *\+/, "", $1); print $1; found = 1; exit }
        END { if (!found) print "-" }' "$1"
}

RESULTS=()
FAILED=0
MAC=52:54:00:d0:de:12

boot() { # MODE: bios, uefi (cidata seed) or bios-seedfrom
    local mode=$1 fw=${1%%-*} port overlay base=$RAW seed log t0 t_ssh='' t_done deadline out
    say "=== $mode ==="
    mkdir -p "$W/seed-$mode"
    cat >"$W/seed-$mode/meta-data" <<EOF
instance-id: debtest-$mode-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
local-hostname: debtest
EOF
    cat >"$W/seed-$mode/user-data" <<EOF
#cloud-config
ssh_authorized_keys:
  - $(cat "$W/id_ed25519.pub")
EOF
    local seed_drive=()
    if [ "$mode" = bios-seedfrom ]; then
        # What a template does: the seed's address in the installed root, served by HTTP.
        local http_port secret offset
        http_port=$(free_port)
        secret=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
        mkdir -p "$W/http-$mode/metadata/$secret"
        cp "$W/seed-$mode/meta-data" "$W/seed-$mode/user-data" "$W/http-$mode/metadata/$secret/"
        # Without a vendor-data (a 404) cloud-init 22.4 asks again ten times, ~10 s.
        : >"$W/http-$mode/metadata/$secret/vendor-data"
        python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$W/http-$mode" \
            >"$W/http-$mode.log" 2>&1 &
        HTTP_PID=$!
        # cloud-init 22.4 fetches no network-config from seedfrom: a template puts the
        # machine's network-config v2 here (read in init-local, before any network).
        cat >"$W/90-dragonfly.cfg" <<EOF
datasource:
  NoCloud:
    seedfrom: http://10.0.2.2:$http_port/metadata/$secret/
network:
  version: 2
  ethernets:
    boot:
      match:
        macaddress: "$MAC"
      set-name: dfnet0
      addresses: [ 10.0.2.15/24 ]
      routes:
        - to: 0.0.0.0/0
          via: 10.0.2.2
      nameservers:
        addresses: [ 10.0.2.3 ]
EOF
        base=$W/disk-$mode.raw
        cp --sparse=always "$RAW" "$base"
        offset=$(python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))
print(next(p["startBytes"] for p in m["partitions"] if p["name"] == "root"))' "$MANIFEST")
        debugfs -w -R "write $W/90-dragonfly.cfg /etc/cloud/cloud.cfg.d/90-dragonfly.cfg" \
            "$base?offset=$offset" >/dev/null 2>&1
        debugfs -R "cat /etc/cloud/cloud.cfg.d/90-dragonfly.cfg" "$base?offset=$offset" \
            2>/dev/null | grep -q "seedfrom: http://10.0.2.2:$http_port/" ||
            { say "could not write 90-dragonfly.cfg into the image"; exit 1; }
        say "seed: http://10.0.2.2:$http_port/metadata/$secret/ (90-dragonfly.cfg in the root)"
    else
        seed=$W/seed-$mode.iso
        xorriso -as genisoimage -quiet -output "$seed" -volid cidata -joliet -rock \
            "$W/seed-$mode/meta-data" "$W/seed-$mode/user-data" 2>/dev/null
        # shellcheck disable=SC2054 # QEMU's option values have commas
        seed_drive=(-drive "file=$seed,format=raw,if=none,id=seed,readonly=on"
            -device virtio-blk-pci,drive=seed)
    fi
    overlay=$W/disk-$mode.qcow2
    qemu-img create -q -f qcow2 -b "$base" -F raw "$overlay" 4G
    port=$(free_port)
    log=$W/serial-$mode.log
    # shellcheck disable=SC2054 # QEMU's option values have commas
    # q35 for both firmwares: only the firmware differs (and no floppy drive, whose I/O
    # errors fill the journal when blkid probes it for the seed on the pc machine).
    local qemu=(timeout --kill-after=5 "$BOOT_TIMEOUT" qemu-system-x86_64 -accel tcg
        -machine q35 -m "$MEMORY" -smp "$CPUS" -display none -monitor none -serial stdio
        -no-reboot
        -drive "file=$overlay,format=qcow2,if=none,id=d0,cache=unsafe"
        -device virtio-blk-pci,drive=d0,bootindex=1
        "${seed_drive[@]}"
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22"
        -device "virtio-net-pci,netdev=n0,mac=$MAC,romfile=")
    case $fw in
        bios)
            # SeaBIOS prints to the serial line too (lab pitfall 7).
            printf '\xf8\x03' >"$W/sercon-port.bin"
            qemu+=(-vga none -fw_cfg "name=etc/sercon-port,file=$W/sercon-port.bin")
            ;;
        uefi)
            cp /usr/share/OVMF/OVMF_VARS_4M.fd "$W/OVMF_VARS-$mode.fd"
            # shellcheck disable=SC2054
            qemu+=(-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
                -drive "if=pflash,format=raw,file=$W/OVMF_VARS-$mode.fd"
                -fw_cfg name=opt/org.tianocore/IPv6Support,string=no
                -fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no)
            ;;
    esac
    t0=$(now)
    "${qemu[@]}" </dev/null 2>"$W/qemu-$mode.log" > >(python3 -u -c '
import re, sys, time
t0 = time.time()
junk = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b\x0c\x0e-\x1f]")
buf = b""
def emit(line):
    line = junk.sub(b"", line).strip()
    if line:
        sys.stdout.write("%+8.2f  %s\n" % (time.time() - t0, line.decode("utf-8", "replace")))
while True:
    chunk = sys.stdin.buffer.read1(4096)
    if not chunk:
        break
    buf += chunk
    *lines, buf = re.split(rb"\r\n|\n|\r", buf)
    for l in lines:
        emit(l)
    sys.stdout.flush()
emit(buf)
' >"$log") &
    QEMU_PID=$!
    say "QEMU pid $QEMU_PID, SSH on 127.0.0.1:$port, serial $log"

    # Wait for a login. Until sshd listens, QEMU's forwarder accepts and drops connections.
    deadline=$(($(date +%s) + BOOT_TIMEOUT))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if ! kill -0 "$QEMU_PID" 2>/dev/null; then
            say "QEMU exited before SSH answered; the end of $log:"
            tail -n 40 "$log" >&2
            QEMU_PID=
            FAILED=1
            RESULTS+=("FAIL $mode: QEMU exited")
            return 0
        fi
        if "${SSH[@]}" -p "$port" debian@127.0.0.1 true 2>/dev/null; then
            t_ssh=$(now)
            break
        fi
        sleep 1
    done
    if [ -z "$t_ssh" ]; then
        say "no SSH login within ${BOOT_TIMEOUT} s; the end of $log:"
        tail -n 40 "$log" >&2
        stop_qemu
        FAILED=1
        RESULTS+=("FAIL $mode: no SSH login")
        return 0
    fi
    say "SSH login after $(secs "$t0" "$t_ssh") s"
    # Everything checked in one session: cloud-init done, then the facts.
    # shellcheck disable=SC2016 # expanded by the VM's shell
    out=$("${SSH[@]}" -p "$port" debian@127.0.0.1 '
        cloud-init status --wait >/dev/null 2>&1; echo "status=$(cloud-init status | sed -n "s/^status: //p")"
        echo "hostname=$(hostname)"
        echo "firmware=$([ -d /sys/firmware/efi ] && echo uefi || echo bios)"
        echo "kernel=$(uname -r)"
        echo "cmdline=$(cat /proc/cmdline)"
        echo "system=$(systemctl is-system-running --wait 2>/dev/null)"
        echo "failed_units=$(systemctl list-units --failed --plain --no-legend | awk "{print \$1}" | paste -sd, -)"
        echo "root_bytes=$(df -B1 --output=size / | tail -n 1 | tr -d " ")"
        echo "disk_bytes=$(lsblk -bdno SIZE /dev/vda)"
        echo "host_keys=$(ls /etc/ssh/ssh_host_*_key 2>/dev/null | sed "s|.*/ssh_host_||; s|_key||" | paste -sd, -)"
        echo "machine_id=$(cat /etc/machine-id)"
        echo "sudo=$(sudo -n true 2>/dev/null && echo yes || echo no)"
        echo "datasource=$(cloud-init query platform 2>/dev/null || sudo -n cloud-init query platform)"
        echo "renderer=$(sudo -n grep -o "Selected renderer .[a-z]*" /var/log/cloud-init.log | tail -n 1)"
        echo "ds_identify=$(sudo -n grep -m1 -o "single entry in datasource_list.*" /run/cloud-init/ds-identify.log)"
        echo "resolv=$(readlink /etc/resolv.conf)"
        echo "userspace=$(systemd-analyze 2>/dev/null | head -n 1)"
        echo "hosts=$(grep -m1 debtest /etc/hosts)"
        echo "esp=$(findmnt -no SOURCE /boot/efi) $(sudo -n ls /boot/efi/EFI/BOOT/)"
        echo "nic=$(ip -br -4 addr | grep -v "^lo " | tr -s " " | paste -sd, -)"
        echo "dns=$(resolvectl dns 2>/dev/null | grep -v "^Global" | tr -s " " | paste -sd, -)"
        echo "journal_errors=$(sudo -n journalctl -b -p err -q --no-pager | wc -l)"
        sudo -n journalctl -b -p err -q --no-pager | head -n 5 | sed "s/^/  journal: /"
        echo "cloud_init_blame:"; sudo -n cloud-init analyze blame 2>/dev/null | sed -n "2,6p"
        # The fallback for host keys: skipped at this boot (cloud-init made them), and
        # making them when there are none.
        echo "keys_unit_at_boot=$(systemctl show -p ConditionResult --value dragonfly-ssh-host-keys.service)"
        sudo -n sh -c "rm -f /etc/ssh/ssh_host_* && systemctl restart dragonfly-ssh-host-keys.service"
        echo "keys_unit_made=$(ls /etc/ssh/ssh_host_*_key 2>/dev/null | sed "s|.*/ssh_host_||; s|_key||" | paste -sd, -)"
    ' 2>&1) || true
    t_done=$(now)
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    field() { printf '%s\n' "$out" | sed -n "s/^$1=//p" | head -n 1; }
    local problems=()
    [ "$(field status)" = "done" ] || problems+=("cloud-init status: $(field status)")
    [ "$(field hostname)" = debtest ] || problems+=("hostname: $(field hostname)")
    [ "$(field firmware)" = "$fw" ] || problems+=("booted as $(field firmware)")
    [ "$(field sudo)" = yes ] || problems+=("no sudo for the default user")
    [ -n "$(field host_keys)" ] || problems+=("no SSH host keys")
    [ -n "$(field machine_id)" ] || problems+=("empty machine-id")
    # growpart and resizefs: the root fills the 4 GiB disk, not the image's 2 GiB.
    [ "$(field root_bytes)" -gt $((3 << 30)) ] 2>/dev/null ||
        problems+=("root not grown: $(field root_bytes) bytes")
    [ "$(field system)" = running ] || problems+=("system $(field system): $(field failed_units)")
    case $(field esp) in
        /dev/vda2\ BOOTX64.EFI) ;;
        *) problems+=("ESP not mounted at /boot/efi: $(field esp)") ;;
    esac
    if [ "$mode" = bios-seedfrom ]; then
        # The network-config v2 of 90-dragonfly.cfg, not cloud-init's DHCP fallback.
        case $(field nic) in
            "dfnet0 UP 10.0.2.15/24"*) ;;
            *) problems+=("network-config v2 not applied: $(field nic)") ;;
        esac
        [[ $(field dns) == *"10.0.2.3"* ]] || problems+=("DNS: $(field dns)")
    fi
    [ "$(field keys_unit_made)" = ecdsa,ed25519,rsa ] ||
        problems+=("dragonfly-ssh-host-keys.service made: $(field keys_unit_made)")
    if [ "$mode" = bios-seedfrom ]; then
        stop_http
        say "cloud-init fetched (HTTP log):"
        sed -n 's/.*"\(GET [^"]*\)" \([0-9]*\).*/    \1 → \2/p' "$W/http-$mode.log" >&2
        grep -q 'GET /metadata/[0-9a-f]*/user-data HTTP/1.1" 200' "$W/http-$mode.log" ||
            problems+=("user-data never fetched over HTTP")
    fi
    # Clean shutdown, then the milestones from the serial log.
    "${SSH[@]}" -p "$port" debian@127.0.0.1 'sudo -n systemctl poweroff' 2>/dev/null || true
    local waited=0
    while kill -0 "$QEMU_PID" 2>/dev/null && [ "$waited" -lt 120 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    local t_off
    t_off=$(now)
    kill -0 "$QEMU_PID" 2>/dev/null && problems+=("no power-off within 120 s")
    stop_qemu
    local grub kernel init_local ci_final
    grub=$(log_time "$log" 'GNU GRUB|Welcome to GRUB|Booting .Debian')
    kernel=$(log_time "$log" 'Linux version [0-9]')
    init_local=$(log_time "$log" "running 'init-local'")
    ci_final=$(log_time "$log" 'Cloud-init v. .* finished at')
    local line
    line="$mode: QEMU start → GRUB ${grub} s → kernel ${kernel} s → cloud-init init-local ${init_local} s"
    line+=" → SSH login $(secs "$t0" "$t_ssh") s → cloud-init done (serial: ${ci_final} s;"
    line+=" checked $(secs "$t0" "$t_done") s) → powered off $(secs "$t0" "$t_off") s"
    if [ ${#problems[@]} -eq 0 ]; then
        RESULTS+=("PASS $line")
    else
        FAILED=1
        RESULTS+=("FAIL $line: $(IFS=';'; echo "${problems[*]}")")
    fi
    say "${RESULTS[-1]}"
}

MODES=("${FIRMWARES[@]}")
[ "$SEEDFROM" -eq 0 ] || MODES+=(bios-seedfrom)
for mode in "${MODES[@]}"; do
    boot "$mode"
done
say "=== summary (TCG, $CPUS vCPUs, $MEMORY MiB) ==="
printf '%s\n' "${RESULTS[@]}"
exit "$FAILED"
