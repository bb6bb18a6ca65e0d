#!/bin/bash
# Boot Dragonfly's units under a real systemd, in a container, and check that every daemon
# runs steadily there and serves a real client.
#
#   units/nspawn-test.sh [BIN_DIR]     # BIN_DIR, else $DRAGONFLY_BIN_DIR, else target/release
#
# units/check.sh checks the unit files statically; this runs them. A unit setting the code
# does not honour (WatchdogSec= without WATCHDOG=1, Type=notify without READY=1, a sandbox
# that forbids what the daemon does) shows up only here. It needs root, debootstrap,
# systemd-nspawn (package systemd-container), ip, curl and busybox, and the Debian mirror once:
#
# 1. Builds (once, cached in target/nspawn-root/base, ~250 MB, ~1 min) a Debian bookworm
#    minbase root with systemd and nats-server (whose package enables its service on
#    127.0.0.1:4222).
# 2. Mounts a throwaway overlay on it and installs the binaries and units with
#    packaging/install.sh, so every run starts clean and the cached root stays pristine; writes
#    a lab config into it (a /24 on the container's veth).
# 3. Makes two network namespaces joined by a veth: the container's and the clients'. Nothing
#    leaves them.
# 4. Boots the container in the first: `systemd-nspawn --keep-unit --register=no -b` (this
#    host's PID 1 is not systemd, so no machined: the container is driven with
#    `nsenter -t PID1 -a`).
# 5. As a package's post-install would: systemd-sysusers, systemd-tmpfiles --create,
#    daemon-reload; then `systemctl start dragonfly.target`.
# 6. From the clients' namespace, as an operator's machines would: a DHCP lease from
#    dragonfly-dhcpd (busybox udhcpc), a TFTP download from dragonfly-tftpd (curl tftp://),
#    an iPXE script from dragonfly-ipxed (GET /boot/{mac}), GET /api/health from apid. The
#    socket-activated daemons start on that first packet or connection. Then each daemon's
#    /metrics on its dragonfly-<daemon>-metrics.socket (127.0.0.1:9641-9646, the container's
#    loopback), counting what the clients just did.
# 7. Leaves everything running for $DRAGONFLY_NSPAWN_SOAK seconds (default 95: three periods of
#    the units' WatchdogSec=30s), asks every daemon again, and fails on any restart
#    (NRestarts), any watchdog kill in the journal, or any unit not active.
# 8. Checks socket activation (a stopped apid is started again by the next connection), that
#    each daemon runs as its own user, the database files' group and mode, apid's own
#    credentials database (0600 in its 0700 StateDirectory=) and that an administrator made by
#    `create-admin` logs in; then stops each
#    service with `systemctl stop`: each must exit with status 0, within 10 s.
#
# DRAGONFLY_NSPAWN_HOLD=1 keeps the container up after the checks, until Ctrl-C, to look
# around in it: `nsenter -t $(cat target/nspawn-root/run/pid1) -a journalctl -u 'dragonfly*'`.
#
# Skips (exit 0) when not root, without the tools, or without the built binaries.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=${1:-${DRAGONFLY_BIN_DIR:-$repo/target/release}}
cache=$repo/target/nspawn-root
base=$cache/base
soak=${DRAGONFLY_NSPAWN_SOAK:-95}
daemons=(apid ipxed dhcpd tftpd workflowd bmcd)

skip() { echo "SKIP: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root (systemd-nspawn)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn not installed (package systemd-container)"
for tool in ip curl busybox; do
    command -v "$tool" >/dev/null || skip "$tool not installed (packaging/deps.sh lab test)"
done
for b in dragonfly-migrate "${daemons[@]/#/dragonfly-}"; do
    [ -x "$bin_dir/$b" ] || skip "$bin_dir/$b not built (cargo build --release)"
done

# The marker names what the root holds: a root made for an older list is made again.
base_ok=$base/.dragonfly-base-ok-2
if [ ! -e "$base_ok" ]; then
    command -v debootstrap >/dev/null || skip "debootstrap not installed"
    echo "building $base (debootstrap bookworm, once)"
    rm -rf "$base"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,nats-server,ipmitool \
        bookworm "$base" > "$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; echo "debootstrap failed" >&2; exit 1; }
    touch "$base_ok"
fi

run=$cache/run
root=$run/merged
# The container's network namespace and the clients', made and removed by this script.
ns_ct=dragonfly-nspawn-ct
ns_cl=dragonfly-nspawn-cl
net=10.231.7
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ]; then
        # SIGTERM: nspawn powers the container off in an orderly way. A container still
        # booting can miss it, so repeat it, and kill nspawn if that takes over 30 s.
        for _ in $(seq 30); do
            kill -TERM "$nspawn_pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
        nspawn_pid=
    fi
    if mountpoint -q "$root"; then umount "$root"; fi
    rm -rf "$run" /run/systemd/nspawn  # nspawn leaves the latter behind (/run is not a tmpfs here)
    ip netns del "$ns_ct" 2>/dev/null || true
    ip netns del "$ns_cl" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
mkdir -p "$run/upper" "$run/work" "$root"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$run/upper,workdir=$run/work" "$root"

DRAGONFLY_BIN_DIR=$bin_dir "$repo/packaging/install.sh" "$root" > /dev/null

# A lab's config: dhcpd hands out $net.100-200 on the container's veth, ipxed's scripts point
# there. The agent files and the TFTP file are stand-ins: this checks that the daemons run and
# serve under their units, not the agent image.
cat > "$root/etc/dragonfly/dragonfly.toml" <<EOF
[apid]
secure_cookies = false

[ipxed]
public_url = "http://$net.1:8080"
apid_url = "http://$net.1:3001"
agent_dir = "/var/lib/dragonfly/agent"

[dhcpd]
mode = "reservation"

[[dhcpd.subnets]]
network = "$net.0/24"
pool_start = "$net.100"
pool_end = "$net.200"
router = "$net.1"

[tftpd]
roots = ["/var/lib/dragonfly/tftp"]
EOF
mkdir -p "$root/var/lib/dragonfly/agent" "$root/var/lib/dragonfly/tftp"
echo "stand-in kernel" > "$root/var/lib/dragonfly/agent/vmlinuz"
echo "stand-in initrd" > "$root/var/lib/dragonfly/agent/initrd.img"
head -c 200000 /dev/urandom > "$root/var/lib/dragonfly/tftp/undionly.kpxe"
chmod -R a+rX "$root/var/lib/dragonfly/agent" "$root/var/lib/dragonfly/tftp"

ip netns add "$ns_ct"
ip netns add "$ns_cl"
ip link add dfn-ct type veth peer name dfn-cl
ip link set dfn-ct netns "$ns_ct"
ip link set dfn-cl netns "$ns_cl"
ip -n "$ns_ct" addr add "$net.1/24" dev dfn-ct
for ns in "$ns_ct" "$ns_cl"; do ip -n "$ns" link set lo up; done
ip -n "$ns_ct" link set dfn-ct up
ip -n "$ns_cl" link set dfn-cl up
# The clients' own address, outside dhcpd's pool (udhcpc below only reports its lease).
ip -n "$ns_cl" addr add "$net.50/24" dev dfn-cl
client_mac=$(ip -n "$ns_cl" -o link show dfn-cl | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
cl() { ip netns exec "$ns_cl" "$@"; }

systemd-nspawn --keep-unit --register=no --network-namespace-path="/run/netns/$ns_ct" \
    -D "$root" -b > "$run/console.log" 2>&1 < /dev/null &
nspawn_pid=$!

# The container's PID 1: nspawn's child once it has exec'd systemd (before that, the child is
# a transient copy of nspawn; entering its namespaces, or stopping the container then, fails).
pid1=
for _ in $(seq 200); do
    for pid in $(ps --ppid "$nspawn_pid" -o pid=); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ] && pid1=$pid
    done
    [ -n "$pid1" ] && break
    sleep 0.1
done
[ -n "$pid1" ] || { cat "$run/console.log" >&2; echo "container did not start" >&2; exit 1; }

echo "$pid1" > "$run/pid1"
ct() { nsenter -t "$pid1" -a "$@"; }
failed=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failed=1; }
# check DESCRIPTION COMMAND...: PASS/FAIL on the command's status.
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
prop() { ct systemctl show --value -p "$2" "$1"; }
# A unit's size (512M, 1G) as systemctl show prints it, in bytes.
to_bytes() { case $1 in *G) echo $((${1%G} << 30)) ;; *M) echo $((${1%M} << 20)) ;; *) echo "$1" ;; esac; }

# Until systemd has its private bus up, systemctl fails ("Failed to connect to bus"); then
# --wait waits for the boot to finish.
state=
for _ in $(seq 100); do
    state=$(ct timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
    [ -n "$state" ] && break
    sleep 0.2
done
echo "container booted: ${state:-no answer}"

# What a package's post-install does.
ct systemd-sysusers /usr/lib/sysusers.d/dragonfly.conf
ct systemd-tmpfiles --create /usr/lib/tmpfiles.d/dragonfly.conf
ct systemctl daemon-reload

ct systemctl start dragonfly.target || true
for _ in $(seq 300); do   # up to 30 s: a daemon may wait for NATS before READY=1
    all=1
    for d in "${daemons[@]}"; do
        [ "$(ct systemctl is-active "dragonfly-$d.service")" = active ] || all=0
    done
    [ "$all" = 1 ] && break
    sleep 0.1
done

metrics_sockets=()
for d in "${daemons[@]}"; do metrics_sockets+=("dragonfly-$d-metrics.socket"); done
check "dragonfly-migrate.service ran and succeeded" \
    test "$(prop dragonfly-migrate.service ActiveState),$(prop dragonfly-migrate.service Result)" = "active,success"
for unit in dragonfly-apid.socket dragonfly-apid-agent.socket dragonfly-ipxed.socket \
            dragonfly-dhcpd.socket dragonfly-dhcpd-pxe.socket dragonfly-tftpd.socket \
            "${metrics_sockets[@]}"; do
    check "$unit is active" ct systemctl -q is-active "$unit"
done
for d in "${daemons[@]}"; do
    check "dragonfly-$d.service is active (READY=1 received)" \
        ct systemctl -q is-active "dragonfly-$d.service"
done

# ask_all LABEL: each daemon answers a real client, from the clients' namespace.
ask_all() {
    local label=$1 out status lease
    status=$(cl curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$net.1:3000/api/health" || true)
    check "$label: apid GET /api/health: $status" test "$status" = 200
    status=$(cl curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$net.1:3001/api/health" || true)
    check "$label: apid's agent socket GET /api/health: $status" test "$status" = 200
    status=$(cl curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$net.1:3001/api/machines" || true)
    check "$label: apid's agent socket has no operator route (/api/machines: $status)" \
        grep -qx '401\|404' <<< "$status"
    out=$(cl curl -s --max-time 10 "http://$net.1:8080/boot/$client_mac" || true)
    check "$label: ipxed GET /boot/$client_mac serves an iPXE script" grep -q '^#!ipxe' <<< "$out"
    rm -f "$run/tftp.out"
    cl curl -s --max-time 20 -o "$run/tftp.out" "tftp://$net.1/undionly.kpxe" || true
    check "$label: tftpd serves undionly.kpxe intact" \
        cmp -s "$run/tftp.out" "$root/var/lib/dragonfly/tftp/undionly.kpxe"
    out=$(cl timeout 30 busybox udhcpc -i dfn-cl -n -q -f -t 5 -T 2 -s /bin/true 2>&1 || true)
    lease=$(sed -n 's/.*lease of \([0-9.]*\) obtained.*/\1/p' <<< "$out")
    check "$label: dhcpd leases ${lease:-nothing} to udhcpc" grep -q "^$net\\.[0-9]*$" <<< "$lease"
}

# Each daemon's metrics port (units/dragonfly-<daemon>-metrics.socket).
declare -A metrics_port=([dhcpd]=9641 [tftpd]=9642 [ipxed]=9643 [apid]=9644 [workflowd]=9645 [bmcd]=9646)
# ask_metrics LABEL: every daemon's /metrics on the container's loopback, with what ask_all did
# counted.
ask_metrics() {
    local label=$1 d out
    for d in "${daemons[@]}"; do
        out=$(ip netns exec "$ns_ct" curl -s --max-time 10 "http://127.0.0.1:${metrics_port[$d]}/metrics" || true)
        check "$label: dragonfly-$d serves /metrics on 127.0.0.1:${metrics_port[$d]}" \
            grep -q "^dragonfly_build_info{daemon=\"$d\"" <<< "$out"
        case $d in
            dhcpd) check "$label: dhcpd counted its leases" \
                grep -Eq '^dragonfly_dhcpd_leases_granted_total [1-9]' <<< "$out" ;;
            tftpd) check "$label: tftpd counted its transfers" \
                grep -Eq '^dragonfly_tftpd_transfers_total\{outcome="complete"\} [1-9]' <<< "$out" ;;
            ipxed) check "$label: ipxed counted its boot decisions" \
                grep -Eq '^dragonfly_ipxed_boot_decisions_total\{fate="discovery"\} [1-9]' <<< "$out" ;;
            apid) check "$label: apid counted GET /api/health by its route" \
                grep -Eq '^dragonfly_apid_http_requests_total\{.*route="/api/health",status="200"\} [1-9]' <<< "$out" ;;
        esac
    done
}
ask_all "first request"
ask_metrics "first request"

echo "leaving every daemon running for ${soak}s (WatchdogSec=30s)"
sleep "$soak"
for d in "${daemons[@]}"; do
    unit=dragonfly-$d.service
    check "$unit still active after ${soak}s, restarts: $(prop "$unit" NRestarts)" \
        test "$(prop "$unit" ActiveState),$(prop "$unit" NRestarts)" = "active,0"
done
kills=$(ct journalctl --no-pager -u 'dragonfly*' | grep -c -i 'watchdog timeout' || true)
check "no watchdog kill in the journal ($kills)" test "$kills" = 0
ask_all "after ${soak}s"
ask_metrics "after ${soak}s"

ct systemctl stop dragonfly-apid.service 2>/dev/null   # warns that the socket can start it again: yes
check "apid stopped, socket still listening" \
    test "$(ct systemctl is-active dragonfly-apid.service dragonfly-apid.socket | paste -sd,)" = "inactive,active"
status=$(cl curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$net.1:3000/api/health" || true)
check "socket activation: GET /api/health after stop: $status" test "$status" = 200
check "socket activation started apid again" ct systemctl -q is-active dragonfly-apid.service

for d in "${daemons[@]}"; do
    unit=dragonfly-$d.service
    limits="$(prop "$unit" LimitNOFILE),$(prop "$unit" TasksMax),$(prop "$unit" MemoryMax)"
    want=$(for key in LimitNOFILE TasksMax MemoryMax; do
        to_bytes "$(sed -n "s/^$key=//p" "$repo/units/$unit")"
    done | paste -sd,)
    check "$unit has its resource limits (LimitNOFILE,TasksMax,MemoryMax: $limits)" test "$limits" = "$want"
    main_pid=$(prop "dragonfly-$d.service" MainPID)
    user=$(ct stat -c %U "/proc/$main_pid" 2>/dev/null || echo "?")
    check "$d runs as dragonfly-$d (pid $main_pid: $user)" test "$user" = "dragonfly-$d"
done
db=/var/lib/dragonfly/dragonfly.db
owner=$(ct stat -c '%U:%G %a' "$db" 2>/dev/null || echo "missing")
check "$db created by dragonfly-migrate, group-writable: $owner" test "$owner" = "dragonfly-migrate:dragonfly 660"
for f in "$db-wal" "$db-shm"; do
    if ct test -e "$f"; then
        mode=$(ct stat -c '%G %a' "$f")
        check "$f is group dragonfly, group-writable: $mode" test "$mode" = "dragonfly 660"
    fi
done

# apid's own database: made by apid in its StateDirectory=, 0600 in 0700, its user's alone.
auth=/var/lib/dragonfly-apid
owner=$(ct stat -c '%U %a' "$auth" 2>/dev/null || echo "missing")
check "$auth is apid's alone: $owner" test "$owner" = "dragonfly-apid 700"
owner=$(ct stat -c '%U %a' "$auth/auth.db" 2>/dev/null || echo "missing")
check "$auth/auth.db created by apid, 0600: $owner" test "$owner" = "dragonfly-apid 600"
# The first administrator, as packaging/README.md says, then a login from the clients' side.
ct sh -c 'echo nspawn-correct-horse-battery | setpriv --reuid=dragonfly-apid --regid=dragonfly \
    --init-groups dragonfly-apid create-admin --username admin' > "$run/create-admin.log" 2>&1 || true
status=$(cl curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'content-type: application/json' \
    -d '{"username":"admin","password":"nspawn-correct-horse-battery"}' \
    "http://$net.1:3000/api/auth/login" || true)
check "create-admin as dragonfly-apid, then POST /api/auth/login: $status" test "$status" = 200

# Power control under the real unit and its sandbox: bmcd runs Debian's ipmitool (installed in
# the container) against OpenIPMI's ipmi_sim, a BMC on the clients' side ($net.50:623), driven
# through apid as an operator would: register the machine, give its BMC, power it on.
if command -v ipmi_sim >/dev/null; then
    bmc=$run/bmc
    bmc_password=nspawn-bmc-pw-7Hq2
    mkdir -p "$bmc/state"
    echo 0 > "$bmc/power"
    cat > "$bmc/chassis.sh" <<HOOK
#!/bin/sh
op=\$2; shift 2
case \$op in
  get) for n in "\$@"; do case \$n in power) echo "power:\$(cat $bmc/power)";; boot) echo "boot:none";; esac; done;;
  set) while [ \$# -ge 2 ]; do [ "\$1" = power ] && echo "\$2" > $bmc/power; shift 2; done;;
esac
HOOK
    chmod +x "$bmc/chassis.sh"
    cat > "$bmc/lan.conf" <<CONF
name "nspawn-bmc"
set_working_mc 0x20
  startlan 1
    addr $net.50 623
    priv_limit admin
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "$bmc/chassis.sh 0x20"
  user 2 true "admin" "$bmc_password" admin 10 none md2 md5 straight
CONF
    printf 'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n' > "$bmc/bmc.emu"
    cl ipmi_sim -c "$bmc/lan.conf" -f "$bmc/bmc.emu" -s "$bmc/state" -n > "$bmc/ipmi_sim.log" 2>&1 &
    ipmi_sim_pid=$!
    api() { # METHOD PATH [BODY]: an operator's call with the session cookie, from the clients' side
        cl curl -s --max-time 60 -b "$run/cookies" -H "origin: http://$net.1:3000" \
            -H 'content-type: application/json' -X "$1" ${3:+-d "$3"} -w '\n%{http_code}' \
            "http://$net.1:3000$2" || true
    }
    cl curl -s -o /dev/null -c "$run/cookies" -H 'content-type: application/json' \
        -d '{"username":"admin","password":"nspawn-correct-horse-battery"}' \
        "http://$net.1:3000/api/auth/login" || true
    out=$(api POST /api/machines/register '{"macs":["02:00:00:00:bc:01"]}')
    machine=$(sed -n 's/.*"id":"\([0-9a-f-]*\)".*/\1/p' <<< "$out" | head -1)
    check "a machine registered by hand: ${machine:-$out}" test -n "$machine"
    out=$(api PUT "/api/machines/$machine/bmc" \
        "{\"type\":\"ipmi\",\"address\":\"$net.50\",\"username\":\"admin\",\"password\":\"$bmc_password\"}")
    check "PUT its BMC: $(tail -1 <<< "$out")" test "$(tail -1 <<< "$out")" = 200
    out=$(api POST "/api/machines/$machine/power" '{"action":"on"}')
    check "power on through apid → bmcd → ipmitool: $(head -1 <<< "$out" | cut -c1-160)" \
        test "$(tail -1 <<< "$out")" = 200
    check "the BMC was told: power $(cat "$bmc/power")" test "$(cat "$bmc/power")" = 1
    out=$(api POST "/api/machines/$machine/power" '{"action":"status"}')
    check "status reads on: $(head -1 <<< "$out" | cut -c1-160)" grep -q '"powerState":"on"' <<< "$out"
    leaks=$(ct journalctl --no-pager -u 'dragonfly*' | grep -c "$bmc_password" || true)
    check "the BMC password is nowhere in the journal ($leaks)" test "$leaks" = 0
    kill "$ipmi_sim_pid" 2>/dev/null || true
else
    echo "SKIP: power control under systemd: ipmi_sim not installed (packaging/deps.sh bmc)"
    [ -z "${CI:-}" ] || check "ipmi_sim is installed (CI runs every check)" false
fi

# A clean stop: SIGTERM, drained within TimeoutStopSec (30 s) with a wide margin, exit 0.
for d in "${daemons[@]}"; do
    unit=dragonfly-$d.service
    started=$(date +%s%N)
    ct systemctl stop "$unit" 2>/dev/null
    took=$(( ($(date +%s%N) - started) / 1000000 ))
    result="$(prop "$unit" Result) code=$(prop "$unit" ExecMainCode) status=$(prop "$unit" ExecMainStatus)"
    # ExecMainCode 1 is CLD_EXITED: the process exited by itself rather than being killed.
    check "systemctl stop $unit: $result in ${took} ms" \
        test "$result,$((took < 10000))" = "success code=1 status=0,1"
done

live=$(ct systemd-analyze security dragonfly-apid.service 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "live exposure of dragonfly-apid.service (running manager): ${live:-?}"

if [ "$failed" -ne 0 ]; then
    echo "--- journal of the dragonfly units"
    ct journalctl --no-pager -o short-monotonic -u 'dragonfly*' | tail -80
    echo "--- warnings and errors, with their fields (reason, error, …)"
    ct journalctl --no-pager -o verbose -p warning -u 'dragonfly*' |
        grep -E '^[A-Z]|^    (MESSAGE|F_[A-Z_]+)=' | tail -80
fi
if [ -n "${DRAGONFLY_NSPAWN_HOLD:-}" ]; then
    echo "holding the container (PID 1 is $pid1) until Ctrl-C"
    sleep infinity
fi
exit "$failed"
