#!/bin/bash
# Boot Dragonfly's units under a real systemd, in a container, and check they work.
#
#   units/nspawn-test.sh [BIN_DIR]     # BIN_DIR, else $DRAGONFLY_BIN_DIR, else target/release
#
# units/check.sh checks the unit files statically; this runs them. It needs root,
# debootstrap and systemd-nspawn (package systemd-container), and the Debian mirror once:
#
# 1. Builds (once, cached in target/nspawn-root/base, ~250 MB, ~1 min) a Debian bookworm
#    minbase root with systemd and nats-server (whose package enables its service on
#    127.0.0.1:4222).
# 2. Mounts a throwaway overlay on it and installs the binaries and units with
#    packaging/install.sh, so every run starts clean and the cached root stays pristine.
# 3. Boots it: `systemd-nspawn --keep-unit --register=no --private-network -b` (this host's
#    PID 1 is not systemd, so no machined: the container is driven with `nsenter -t PID1 -a`).
# 4. As a package's post-install would: systemd-sysusers, systemd-tmpfiles --create,
#    daemon-reload; then `systemctl start dragonfly.target` and checks that the migration ran,
#    the socket listens, GET /api/health answers 200, that a stopped apid is started again by
#    the next connection (socket activation), each daemon runs as its own user, and the
#    database files are group "dragonfly", group-writable.
#
# Skips (exit 0) when not root, without the tools, or without the built binaries.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=${1:-${DRAGONFLY_BIN_DIR:-$repo/target/release}}
cache=$repo/target/nspawn-root
base=$cache/base

skip() { echo "SKIP: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root (systemd-nspawn)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn not installed (package systemd-container)"
for b in dragonfly-apid dragonfly-migrate; do
    [ -x "$bin_dir/$b" ] || skip "$bin_dir/$b not built (cargo build --release)"
done

if [ ! -e "$base/.dragonfly-base-ok" ]; then
    command -v debootstrap >/dev/null || skip "debootstrap not installed"
    echo "building $base (debootstrap bookworm, once)"
    rm -rf "$base"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,nats-server \
        bookworm "$base" > "$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; echo "debootstrap failed" >&2; exit 1; }
    touch "$base/.dragonfly-base-ok"
fi

run=$cache/run
root=$run/merged
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
}
trap cleanup EXIT
cleanup
mkdir -p "$run/upper" "$run/work" "$root"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$run/upper,workdir=$run/work" "$root"

DRAGONFLY_BIN_DIR=$bin_dir "$repo/packaging/install.sh" "$root" > /dev/null

systemd-nspawn --keep-unit --register=no --private-network -D "$root" -b \
    > "$run/console.log" 2>&1 < /dev/null &
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

ct() { nsenter -t "$pid1" -a "$@"; }
failed=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failed=1; }
# check DESCRIPTION COMMAND...: PASS/FAIL on the command's status.
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

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
for _ in $(seq 300); do   # up to 30 s: a real apid may wait for NATS before READY=1
    [ "$(ct systemctl is-active dragonfly-apid.service)" = active ] && break
    sleep 0.1
done

check "dragonfly-migrate.service ran and succeeded" \
    test "$(ct systemctl show --value -p ActiveState dragonfly-migrate.service),$(ct systemctl show --value -p Result dragonfly-migrate.service)" = "active,success"
check "dragonfly-apid.socket is active" ct systemctl -q is-active dragonfly-apid.socket
check "dragonfly-apid.service is active (READY=1 received)" ct systemctl -q is-active dragonfly-apid.service

# HTTP GET inside the container with bash's /dev/tcp (minbase has no curl).
http_status() {
    ct timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/3000 &&
        printf "GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" >&3 &&
        head -1 <&3' 2>/dev/null | tr -d '\r'
}
status=$(http_status || true)
check "GET /api/health: $status" grep -q '^HTTP/1\.[01] 200' <<< "$status"

ct systemctl stop dragonfly-apid.service 2>/dev/null   # warns that the socket can start it again: yes
check "apid stopped, socket still listening" \
    test "$(ct systemctl is-active dragonfly-apid.service dragonfly-apid.socket | paste -sd,)" = "inactive,active"
status=$(http_status || true)
check "socket activation: GET /api/health after stop: $status" grep -q '^HTTP/1\.[01] 200' <<< "$status"
check "socket activation started apid again" ct systemctl -q is-active dragonfly-apid.service

main_pid=$(ct systemctl show -P MainPID dragonfly-apid.service)
user=$(ct stat -c %U "/proc/$main_pid" 2>/dev/null || echo "?")
check "apid runs as dragonfly-apid (pid $main_pid: $user)" test "$user" = dragonfly-apid
db=/var/lib/dragonfly/dragonfly.db
owner=$(ct stat -c '%U:%G %a' "$db" 2>/dev/null || echo "missing")
check "$db created by dragonfly-migrate, group-writable: $owner" test "$owner" = "dragonfly-migrate:dragonfly 660"
for f in "$db-wal" "$db-shm"; do
    if ct test -e "$f"; then
        mode=$(ct stat -c '%G %a' "$f")
        check "$f is group dragonfly, group-writable: $mode" test "$mode" = "dragonfly 660"
    fi
done
live=$(ct systemd-analyze security dragonfly-apid.service 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "live exposure of dragonfly-apid.service (running manager): ${live:-?}"

if [ "$failed" -ne 0 ]; then
    echo "--- journal of the dragonfly units"
    ct journalctl --no-pager -o short-monotonic -u 'dragonfly*' | tail -60
fi
exit "$failed"
