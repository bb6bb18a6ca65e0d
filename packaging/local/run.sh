#!/usr/bin/env bash
# Run the whole Dragonfly system on this machine, for trying it out and for development.
#
#   sudo packaging/local/run.sh            # the demo: a private lab network and a VM that gets discovered
#   sudo packaging/local/run.sh --uefi     # the same, the VM boots with UEFI firmware (OVMF)
#   packaging/local/run.sh --no-vm         # only NATS and apid, on loopback (root not needed)
#   DRAGONFLY_LISTEN=127.0.0.1:8080 packaging/local/run.sh   # the UI elsewhere than 127.0.0.1:3000
#
# Options:
#   --no-vm   no lab network, no DHCP/TFTP/iPXE, no VM: a private nats-server on
#             127.0.0.1:14222 and apid on 127.0.0.1:3000, as before the demo existed.
#   --uefi    boot the demo VM with OVMF (its own PXE client, then TFTP ipxe.efi from tftpd)
#             instead of SeaBIOS with QEMU's iPXE NIC ROM. Slower (about 10 s more).
#   -h, --help  this text.
#
# The demo (default; needs root) installs what it needs (Debian 12), builds the release
# binaries and the agent image (agent-image/build.sh), and creates the network namespace
# "dragonfly-demo": a bridge br0 (10.99.0.1/24) and a tap for the VM, with no link to the
# host's network. Inside it run nats-server, dhcpd (reservation mode, pool .100-.200), tftpd,
# ipxed and apid on 10.99.0.1, each as the user "dragonfly" and handed its sockets by
# systemd-socket-activate, as under systemd; dnsmasq only answers IPv6 router solicitations
# (iPXE waits 13 s for one otherwise). apid is reached from the host's browser at
# http://127.0.0.1:3000 through systemd-socket-proxyd (socket bound on the host's loopback,
# the proxy itself inside the namespace). Then one QEMU VM (TCG, 1 vCPU, 1024 MiB,
# virtio-net, MAC 52:54:00:d0:00:01) network-boots; its serial console goes to
# var/log/demo-vm.log. The script waits until the agent in the VM has registered, prints the
# machine's memorable name and how to create the first administrator, then follows the logs.
# Ctrl-C (or SIGTERM) stops everything it started, deletes the namespace and exits 0.
# Running it again finds the same machine (same MAC): it is not registered twice.
#
# State lives in ./var (git-ignored): dragonfly.toml (rewritten on every start; edit this
# script, not the file), dragonfly.db, credentials/boot-token-key (made once: replacing it
# invalidates outstanding agent tokens), credentials/bmc-key (bmcd's private key, made once:
# replacing it means setting every BMC password again), agent/ and tftp/ (what ipxed and tftpd serve), and
# log/<process>.log.
#
# The daemons refuse to run as root. As root, this script runs every process (QEMU too) as
# the system user "dragonfly" (created when missing; QEMU switches to it itself, -runas, once
# it has opened the tap). When that user cannot reach this
# checkout (one under /root, say), the binaries are copied to /var/lib/dragonfly-local/bin
# and ./var becomes a link to /var/lib/dragonfly-local. As a normal user (--no-vm only),
# everything runs as that user.
#
# Nothing here answers on the host's network: apid (or the proxy to it) listens on loopback
# unless told otherwise, and DHCP, TFTP and iPXE run only inside the namespace, never on the
# host's real network, where a stray DHCP server would hand out addresses to every machine on
# the segment. Serving a real network is a production install: see README.md.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}"; }
demo=1
uefi=0
for arg in "$@"; do
    case $arg in
        --no-vm) demo=0 ;;
        --uefi) uefi=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "$0: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
[ $demo = 1 ] || [ $uefi = 0 ] || { echo "$0: --uefi is for the demo VM: drop --no-vm" >&2; exit 2; }

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD

readonly nats_port=14222
readonly daemon_user=dragonfly
readonly relocated_state=/var/lib/dragonfly-local
listen=${DRAGONFLY_LISTEN:-127.0.0.1:3000}
# The demo's lab network: a namespace of its own, so the same subnet as the integration tests
# (each test has its own namespace too) never meets the host's.
readonly ns=dragonfly-demo
readonly lab_ip=10.99.0.1
readonly vm_mac=52:54:00:d0:00:01
readonly proxyd=/usr/lib/systemd/systemd-socket-proxyd

# Whatever systemd or a parent gave this shell is not for our children: logs go to files
# here, not the journal, and no socket or credential is passed down.
unset JOURNAL_STREAM NOTIFY_SOCKET LISTEN_PID LISTEN_FDS LISTEN_FDNAMES CREDENTIALS_DIRECTORY \
    WATCHDOG_USEC WATCHDOG_PID RUST_LOG

die() { echo "$0: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

if [ $demo = 1 ] && ! is_root; then
    die "the demo creates a network namespace and runs a VM: run it with sudo," \
        "or pass --no-vm for NATS and apid alone"
fi

# --- What it needs --------------------------------------------------------------------------
# packaging/deps.sh says what each group holds and why: a build, and NATS with setpriv and
# curl; the demo also the lab network and its VM, and what builds the agent image.
# shellcheck source=packaging/deps.sh
. packaging/deps.sh
if [ $demo = 1 ]; then
    deps_install build run lab image
    # agent-image/build.sh downloads a Debian kernel package (apt-get download).
    deps_apt_lists
else
    deps_install build run
fi
nats_server=/usr/sbin/nats-server
deps_cargo

# Where apid is reached for the health check and the printed URL: a wildcard address is
# reached on loopback.
listen_host=${listen%:*}
listen_port=${listen##*:}
if [ "$listen_host" = "$listen" ] || [ -z "$listen_host" ] || ! [[ $listen_port =~ ^[0-9]+$ ]]; then
    die "DRAGONFLY_LISTEN=$listen: expected IP:PORT, e.g. 127.0.0.1:3000 or [::1]:3000"
fi
listen_host=${listen_host#[}
listen_host=${listen_host%]}
case $listen_host in
    0.0.0.0) probe_host=127.0.0.1 ;;
    ::) probe_host=::1 ;;
    *) probe_host=$listen_host ;;
esac
if [[ $probe_host == *:* ]]; then url="http://[$probe_host]:$listen_port"; else url="http://$probe_host:$listen_port"; fi

port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
if [ $demo = 0 ]; then
    port_in_use 127.0.0.1 "$nats_port" &&
        die "127.0.0.1:$nats_port is taken (another run of this script still going?)"
fi
port_in_use "$probe_host" "$listen_port" &&
    die "$listen is taken (another run of this script still going? or set DRAGONFLY_LISTEN)"

# --- Build ----------------------------------------------------------------------------------
echo "==> cargo build --release --locked --bins"
cargo build --release --locked --bins
bin=$repo/target/release
# The lab network and the configuration file, made by the code the end-to-end tests use.
lab=$bin/dragonfly-lab
daemons=(dragonfly-apid dragonfly-migrate dragonfly-workflowd dragonfly-bmcd)
if [ $demo = 1 ]; then
    daemons+=(dragonfly-dhcpd dragonfly-tftpd dragonfly-ipxed)
    echo "==> agent-image/build.sh"
    agent-image/build.sh
fi

# --- Who runs the daemons, and where their state is -----------------------------------------
as_daemon=()
if is_root; then
    if ! getent group "$daemon_user" >/dev/null; then
        groupadd --system "$daemon_user"
    fi
    if ! getent passwd "$daemon_user" >/dev/null; then
        useradd --system --gid "$daemon_user" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "Dragonfly local run" "$daemon_user"
        echo "==> created system user $daemon_user"
    fi
    as_daemon=(setpriv --reuid="$daemon_user" --regid="$daemon_user" --init-groups --)
    if ! "${as_daemon[@]}" test -x "$bin/dragonfly-apid"; then
        # The checkout is out of the daemon user's reach: run from a copy it can reach.
        if [ -L var ]; then
            [ "$(readlink -f var)" = "$relocated_state" ] ||
                die "./var links to $(readlink -f var), not $relocated_state; move it away and run again"
        elif [ -e var ]; then
            die "user $daemon_user cannot reach $repo, so state must move to $relocated_state;" \
                "./var already exists: move it away (mv var var.old) and run again"
        else
            install -d -m 0750 "$relocated_state"
            ln -s "$relocated_state" var
        fi
        install -d -m 0755 -o root -g root "$relocated_state/bin"
        for d in "${daemons[@]}"; do
            install -m 0755 -o root -g root "$bin/$d" "$relocated_state/bin/"
        done
        bin=$relocated_state/bin
        echo "==> user $daemon_user cannot reach $repo: running binaries from $bin;" \
            "./var links to $relocated_state"
    fi
fi

mkdir -p var
state=$(readlink -f var)
install -d "$state/log"
install -d -m 0700 "$state/credentials"
# Per-host secrets, made once: the boot-token key (apid, ipxed) and bmcd's private key (it
# opens the BMC passwords apid seals to its public key).
for name in boot-token-key bmc-key; do
    f=$state/credentials/$name
    if [ ! -s "$f" ]; then
        (umask 077 && head -c 32 /dev/urandom >"$f.tmp" && mv "$f.tmp" "$f")
        echo "==> generated $f"
    fi
    chmod 0600 "$f"
done
key=$state/credentials/boot-token-key
bmc_key=$state/credentials/bmc-key

if [ $demo = 1 ]; then
    # What ipxed and tftpd serve: copies the daemon user can read but not change.
    install -d -m 0755 -o root -g root "$state/agent" "$state/tftp" "$state/images"
    install -m 0644 -o root -g root target/agent-image/vmlinuz target/agent-image/initrd.img \
        "$state/agent/"
    # cp -L: Debian's /usr/lib/ipxe/ipxe.efi may be a link out of the TFTP root.
    for f in undionly.kpxe ipxe.efi snponly.efi; do
        cp -L /usr/lib/ipxe/$f "$state/tftp/$f.tmp" && mv "$state/tftp/$f.tmp" "$state/tftp/$f"
    done
    chmod 0644 "$state"/tftp/*
    apid_listen=$lab_ip:3000
    apid_agent_listen=$lab_ip:3001
    nats_host=127.0.0.1 # the namespace's own loopback
else
    apid_listen=$listen
    # The agents' listener beside the operators', on the same (loopback) address.
    apid_agent_listen=${listen%:*}:3001
    nats_host=127.0.0.1
fi

config=$state/dragonfly.toml
config_args=(--out "$config"
    --header "Written by packaging/local/run.sh on every start: edit the script, not this file."
    --header "Format and defaults: packaging/dragonfly.toml.example."
    --store "$state/dragonfly.db"
    # The script's own nats-server, on a port of its own so it never meets a system one on 4222.
    --nats "nats://$nats_host:$nats_port"
    --boot-token-key "$key" --apid "$apid_listen" --apid-agent "$apid_agent_listen"
    --bmc-key "$bmc_key"
    # apid's own database of operators and credentials (0600 in a 0700 directory it creates).
    --auth-db "$state/apid/auth.db")
if [ $demo = 1 ]; then
    config_args+=(
        --header ""
        --header "The demo's lab network: br0 $lab_ip/24 inside the network namespace $ns."
        --header "To serve a real network, see \"Serving a real network\" in README.md."
        --ipxed "$lab_ip:8080" --public-url "http://$lab_ip:8080" --apid-url "http://$lab_ip:3001"
        --agent-dir "$state/agent" --kernel-cmdline-extra "console=tty0 console=ttyS0,115200 quiet"
        --tftp-root "$state/tftp"
        # UEFI HTTP boot: ipxed serves the same copies (regular files, not Debian's links).
        --ipxe-dir "$state/tftp" --http-boot-x64-url "http://$lab_ip:8080/ipxe/ipxe.efi"
        # The image library: ipxed serves its files to machines being installed.
        --images-dir "$state/images"
        --dhcpd reservation --server-ip "$lab_ip" --dhcpd-ipxed "$lab_ip:8080"
        --subnet "10.99.0.0/24,10.99.0.100,10.99.0.200,$lab_ip")
fi
"$lab" config "${config_args[@]}"
chmod 0644 "$config"

if is_root; then
    chmod 0750 "$state"
    # Everything in the state directory is the daemon user's, except the binaries' copy,
    # the configuration and what ipxed and tftpd serve: the daemons only read those.
    find "$state" \( -path "$state/bin" -o -path "$state/agent" -o -path "$state/tftp" \
        -o -path "$state/images" \) -prune \
        -o ! -path "$config" -exec chown -h "$daemon_user:$daemon_user" {} +
    chown root:root "$config"
    "${as_daemon[@]}" test -w "$state" || die "user $daemon_user cannot write $state"
else
    [ -w "$state" ] || die "$state is not writable by $(id -un) (left by a run as root?)"
fi

# --- Start, and stop on the way out ---------------------------------------------------------
names=()
pids=()
follower=
lab_made=0

alive() { # PID: running, not a zombie
    local stat
    stat=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat != Z* ]]
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$? i pid n
    trap '' INT TERM
    [ -z "$follower" ] || { kill "$follower" 2>/dev/null || true; wait "$follower" 2>/dev/null || true; }
    # Newest first: the VM before the daemons, apid before the nats-server it publishes to.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((n = 0; n < 150; n++)); do alive "$pid" || break; sleep 0.1; done
            if alive "$pid"; then
                echo "${names[i]} did not stop within 15 s: killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        wait "$pid" 2>/dev/null || true
        echo "==> stopped ${names[i]} (pid $pid)"
    done
    if [ "$lab_made" = 1 ]; then
        # Anything still inside (nothing, normally) goes with the namespace.
        "$lab" down "$ns" && echo "==> deleted network namespace $ns"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "==> stopping"; exit 0' INT TERM

declare -A log_from=() # NAME → size of NAME.log before this run's start of it

# start_cmd NAME COMMAND…: in the background, output appended to var/log/NAME.log. setsid
# puts it in its own session, so a Ctrl-C reaches only this script, which then stops the
# processes in order. Neither setsid (not a group leader here) nor setpriv, `ip netns exec`
# or systemd-socket-activate fork, so $! is the process itself.
start_cmd() {
    local name=$1 log=$state/log/$1.log
    shift
    echo "---- $(date -Is) $*" >>"$log"
    log_from[$name]=$(stat -c %s "$log")
    setsid "$@" </dev/null >>"$log" 2>&1 &
    names+=("$name")
    pids+=("$!")
}

# start NAME COMMAND…: start_cmd as the daemon user.
start() {
    local name=$1
    shift
    start_cmd "$name" "${as_daemon[@]}" "$@"
}

fail_with_log() { # NAME MESSAGE
    echo "$0: $2; the end of $state/log/$1.log:" >&2
    tail -n 30 "$state/log/$1.log" >&2
    exit 1
}

logged_since_start() { # NAME TEXT: this run's part of NAME.log holds TEXT
    tail -c +$((${log_from[$1]} + 1)) "$state/log/$1.log" | grep -qF -- "$2"
}

check_config() { # BINARY…
    local b out
    for b in "$@"; do
        out=$("${as_daemon[@]}" "$bin/$b" --config "$config" --check-config 2>&1) ||
            die "$b --check-config: $out"
    done
}

sudo=
[ -z "${SUDO_USER:-}" ] || sudo="sudo "
admin_cmd="$sudo${as_daemon[*]}${as_daemon[*]:+ }$bin/dragonfly-apid --config $config create-admin --username admin"

if [ $demo = 0 ]; then
    echo "==> starting nats-server on 127.0.0.1:$nats_port"
    start nats-server "$nats_server" -a 127.0.0.1 -p "$nats_port"
    for ((n = 0; n < 100; n++)); do
        port_in_use 127.0.0.1 "$nats_port" && break
        alive "${pids[-1]}" || fail_with_log nats-server "nats-server exited"
        sleep 0.1
    done
    port_in_use 127.0.0.1 "$nats_port" || fail_with_log nats-server "nats-server not listening after 10 s"

    echo "==> dragonfly-migrate"
    echo "---- $(date -Is) dragonfly-migrate" >>"$state/log/migrate.log"
    "${as_daemon[@]}" "$bin/dragonfly-migrate" --config "$config" </dev/null \
        >>"$state/log/migrate.log" 2>&1 || fail_with_log migrate "dragonfly-migrate failed"

    echo "==> starting dragonfly-apid on $listen"
    start apid "$bin/dragonfly-apid" --config "$config"
    echo "==> starting dragonfly-workflowd"
    start workflowd "$bin/dragonfly-workflowd" --config "$config"
    echo "==> starting dragonfly-bmcd"
    start bmcd "$bin/dragonfly-bmcd" --config "$config"
else
    check_config "${daemons[@]}"

    # The lab network, as the end-to-end tests build it (integration/src/lab.rs): a bridge
    # with no STP delay, a ULA address only so that router advertisements can be sent, and a
    # tap the daemon user may open (QEMU becomes that user).
    echo "==> creating network namespace $ns: br0 $lab_ip/24, tap0 for the VM"
    "$lab" up "$ns" --addr "$lab_ip/24" --tap "tap0:$daemon_user"
    lab_made=1

    in_ns=(ip netns exec "$ns")
    # Inside the namespace, as the daemon user with no capabilities at all.
    confined=(setpriv --reuid="$daemon_user" --regid="$daemon_user" --init-groups
        --inh-caps=-all --bounding-set=-all --no-new-privs --)
    in_ns_port_open() { "${in_ns[@]}" bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

    # iPXE waits 13-16 s for an IPv6 router advertisement: dnsmasq answers router
    # solicitations (ra-only: no DHCPv4, no DHCPv6, no DNS), then drops root for nobody.
    echo "==> starting dnsmasq (router advertisements only) in $ns"
    start_cmd dnsmasq-ra "${in_ns[@]}" dnsmasq --keep-in-foreground --port=0 --interface=br0 \
        --bind-interfaces --except-interface=lo --no-resolv --no-hosts --log-facility=- \
        --pid-file= --dhcp-leasefile=/dev/null --enable-ra --dhcp-range=::,constructor:br0,ra-only,64,1h

    echo "==> starting nats-server on 127.0.0.1:$nats_port in $ns"
    start_cmd nats-server "${in_ns[@]}" "${confined[@]}" "$nats_server" -a 127.0.0.1 -p "$nats_port"
    for ((n = 0; n < 100; n++)); do
        in_ns_port_open 127.0.0.1 "$nats_port" && break
        alive "${pids[-1]}" || fail_with_log nats-server "nats-server exited"
        sleep 0.1
    done
    in_ns_port_open 127.0.0.1 "$nats_port" || fail_with_log nats-server "nats-server not listening after 10 s"

    echo "==> dragonfly-migrate"
    echo "---- $(date -Is) dragonfly-migrate" >>"$state/log/migrate.log"
    "${in_ns[@]}" "${confined[@]}" "$bin/dragonfly-migrate" --config "$config" </dev/null \
        >>"$state/log/migrate.log" 2>&1 || fail_with_log migrate "dragonfly-migrate failed"

    # Root binds each daemon's sockets and hands them over by name, as systemd's .socket
    # units do (units/); the daemon starts on the first connection or packet. UDP and TCP
    # need two nested calls (the inner --fdname names all fds); here each daemon has one kind.
    echo "==> starting apid, ipxed, tftpd, dhcpd, workflowd, bmcd on $lab_ip in $ns"
    sa=(systemd-socket-activate)
    start_cmd apid "${in_ns[@]}" "${sa[@]}" --listen="$lab_ip:3000" --listen="$lab_ip:3001" \
        --fdname=http:agent \
        "${confined[@]}" "$bin/dragonfly-apid" --config "$config"
    start_cmd ipxed "${in_ns[@]}" "${sa[@]}" --listen="$lab_ip:8080" --fdname=http \
        "${confined[@]}" "$bin/dragonfly-ipxed" --config "$config"
    start_cmd tftpd "${in_ns[@]}" "${sa[@]}" -d --listen=0.0.0.0:69 --fdname=tftp \
        "${confined[@]}" "$bin/dragonfly-tftpd" --config "$config"
    start_cmd dhcpd "${in_ns[@]}" "${sa[@]}" -d --listen=0.0.0.0:67 --listen=0.0.0.0:4011 \
        --fdname=dhcp:pxe "${confined[@]}" "$bin/dragonfly-dhcpd" --config "$config"
    # No sockets: workflowd starts at once and talks only to the store and NATS.
    start_cmd workflowd "${in_ns[@]}" "${confined[@]}" "$bin/dragonfly-workflowd" --config "$config"
    # Nor does bmcd: it reaches BMCs (outgoing only) from the namespace.
    start_cmd bmcd "${in_ns[@]}" "${confined[@]}" "$bin/dragonfly-bmcd" --config "$config"
    for name in apid ipxed tftpd dhcpd; do
        for ((n = 0; n < 100; n++)); do
            logged_since_start "$name" "Listening on" && break
            sleep 0.1
        done
        logged_since_start "$name" "Listening on" || fail_with_log "$name" "no sockets for $name after 10 s"
    done

    # The host's browser reaches apid through a socket on the host's loopback, handed to
    # systemd-socket-proxyd inside the namespace (as the daemon user), which connects to
    # apid there. The socket stays on the host's loopback: nothing else crosses over.
    echo "==> forwarding $listen (host) to $lab_ip:3000 ($ns)"
    start_cmd apid-proxy "${sa[@]}" --listen="$listen" "${in_ns[@]}" "${confined[@]}" "$proxyd" "$lab_ip:3000"
fi

for ((n = 0; n < 300; n++)); do
    curl -fsS -o /dev/null "$url/api/health" 2>/dev/null && break
    for i in "${!pids[@]}"; do alive "${pids[i]}" || fail_with_log "${names[i]}" "${names[i]} exited"; done
    sleep 0.1
done
curl -fsS -o /dev/null "$url/api/health" || fail_with_log apid "dragonfly-apid not healthy after 30 s"

if [ $demo = 0 ]; then
    cat <<EOF

Dragonfly is running: $url/  (health: $url/api/health)
  state  $state  (database, config, boot-token key, BMC key)
  logs   $state/log/{nats-server,migrate,apid,workflowd,bmcd}.log

Create the first administrator: run this in another terminal, then type a password of at
least 12 characters, Enter, and Ctrl-D (it reads the password from standard input):

  $admin_cmd

then log in at $url/ (README.md shows the same with curl).
No DHCP, TFTP or iPXE server runs (--no-vm); without --no-vm they run inside a private lab
network namespace with a VM that network-boots.
Ctrl-C stops everything. Following the logs:

EOF
    follow=(var/log/nats-server.log var/log/apid.log)
else
    # --- The demo VM ----------------------------------------------------------------------
    # TCG only: KVM here may be a nested one that fails inside the firmware (see the lab
    # notes), and TCG works everywhere. QEMU starts as root only to open the tap
    # (/dev/net/tun may be root's alone) and becomes the daemon user (-runas) before the VM
    # runs; its seccomp sandbox keeps it from starting programs. (elevateprivileges=deny
    # would also forbid -runas's own setuid.)
    # shellcheck disable=SC2054 # commas inside QEMU options
    qemu=(qemu-system-x86_64 -name dragonfly-demo-vm -accel tcg -smp 1 -m 1024
        -runas "$daemon_user" -sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny
        -display none -monitor none -serial stdio -boot n
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
    if [ $uefi = 1 ]; then
        firmware="UEFI (OVMF's PXE → TFTP ipxe.efi → iPXE)"
        vars=$state/demo-vm-OVMF_VARS.fd
        install -m 0600 -o "$daemon_user" -g "$daemon_user" /usr/share/OVMF/OVMF_VARS_4M.fd "$vars"
        # OVMF mirrors its console to serial itself; it ignores -boot n (bootindex instead).
        # romfile= (no iPXE ROM): OVMF's own PXE client, so tftpd serves ipxe.efi.
        # shellcheck disable=SC2054
        qemu+=(-machine q35
            -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
            -drive "if=pflash,format=raw,file=$vars"
            -device "virtio-net-pci,netdev=n0,mac=$vm_mac,bootindex=1,romfile=")
    else
        firmware="BIOS (SeaBIOS, QEMU's iPXE NIC ROM)"
        # SeaBIOS and iPXE print only to VGA: "sercon" mirrors them to the serial port.
        sercon=$state/demo-vm-sercon-port.bin
        printf '\xf8\x03' >"$sercon"
        qemu+=(-vga none -fw_cfg "name=etc/sercon-port,file=$sercon"
            -device "virtio-net-pci,netdev=n0,mac=$vm_mac,bootindex=1")
    fi
    # An empty 8 GiB disk (sparse) to install on; after the network, in the boot order.
    vm_disk=$state/demo-vm-disk.img
    [ -e "$vm_disk" ] || truncate -s 8G "$vm_disk"
    chown "$daemon_user:" "$vm_disk" 2>/dev/null || true
    # shellcheck disable=SC2054
    qemu+=(-drive "file=$vm_disk,format=raw,if=none,id=d0"
        -device virtio-blk-pci,drive=d0,bootindex=2)

    # Dragonfly's Debian 12 image, for the README's "install Debian" (built once, then
    # cached outside the repository: minutes the first time), copied into the image library's
    # directory; the Image document that adds it and the template that installs it are written
    # beside the state.
    echo "==> the Debian 12 image (packaging/images/debian-12.sh; built once, then cached)"
    image=$("$lab" debian-template --image debian-12 --image-out "$state/debian-12.image.json" \
        --out "$state/debian-12.template.json") || die "building the Debian image failed"
    # -C: an unchanged file keeps its time, so the library still serves it (ipxed refuses a
    # file changed since it was checksummed).
    install -C -m 0644 "$image" "$state/images/"

    t0_ms=$(date +%s%3N)
    echo "==> booting the demo VM ($vm_mac, $firmware, TCG): console in var/log/demo-vm.log"
    start_cmd demo-vm "${in_ns[@]}" "${qemu[@]}"
    vm_pid=${pids[-1]}

    # The agent registers through apid, which writes the store: the machine updated since
    # the VM started is ours (a known one, from an earlier run, is updated too).
    echo "==> waiting for the machine to be discovered (under TCG, about a minute)"
    db=$state/dragonfly.db
    found=
    for ((n = 0; n < 600; n++)); do
        found=$("${as_daemon[@]}" sqlite3 -readonly -cmd '.timeout 2000' -separator ' ' "$db" \
            "SELECT name, state, created_at_ms >= $t0_ms FROM machines WHERE updated_at_ms >= $t0_ms
             ORDER BY updated_at_ms DESC LIMIT 1" 2>/dev/null) || true
        [ -z "$found" ] || break
        for i in "${!pids[@]}"; do alive "${pids[i]}" || fail_with_log "${names[i]}" "${names[i]} exited"; done
        sleep 0.5
    done
    secs=$((($(date +%s%3N) - t0_ms + 500) / 1000))
    if [ -n "$found" ]; then
        read -r m_name m_state m_new <<<"$found"
        [ "$m_new" = 1 ] && how="a new machine" || how="known from an earlier run: not registered twice"
        cat <<EOF

Discovered: $m_name ($m_state), $secs s after the VM started ($how)

Dragonfly is running: $url/  (health: $url/api/health)
  lab    network namespace $ns: br0 $lab_ip/24; dhcpd, tftpd, ipxed, apid, nats-server inside
  VM     $vm_mac, $firmware; console: tail -f var/log/demo-vm.log
  state  $state  (database, config, boot-token key, BMC key)
  logs   $state/log/{apid,ipxed,dhcpd,tftpd,workflowd,bmcd,nats-server,demo-vm}.log

Create the first administrator: run this in another terminal, then type a password of at
least 12 characters, Enter, and Ctrl-D (it reads the password from standard input):

  $admin_cmd

then log in at $url/ and find $m_name among the machines (README.md shows the same with curl).
Ctrl-C stops everything and deletes the lab network. Following the logs:

EOF
    else
        echo "$0: the VM did not register within $secs s (a busy machine? TCG is slow);" \
            "everything keeps running. The end of var/log/demo-vm.log:" >&2
        tail -n 15 "$state/log/demo-vm.log" | tr -d '\033' >&2
        echo
    fi
    alive "$vm_pid" || fail_with_log demo-vm "the VM exited"
    follow=(var/log/apid.log var/log/ipxed.log var/log/dhcpd.log var/log/tftpd.log)
fi

# Relative names, so tail's "==> var/log/apid.log <==" headers stay short.
tail -n 0 -F "${follow[@]}" &
follower=$!

# Until a signal (the trap exits 0) or until a process dies on its own (an error).
wait -n "${pids[@]}" || true
for i in "${!pids[@]}"; do
    alive "${pids[i]}" || fail_with_log "${names[i]}" "${names[i]} exited on its own"
done
die "a process exited unexpectedly"
