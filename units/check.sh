#!/bin/bash
# Check Dragonfly's systemd units without systemd running (PID 1 need not be systemd).
#
#   units/check.sh [BIN_DIR]       # BIN_DIR, else $DRAGONFLY_BIN_DIR, else target/release
#
# 1. Installs everything with packaging/install.sh into a temporary root: the binaries from
#    BIN_DIR (as left by `cargo build --release`; nothing is built here), the units, sysusers.d
#    and tmpfiles.d. The host's own units (sysinit.target, …) are copied in beside ours,
#    because `systemd-analyze verify --root=` resolves every dependency inside that root.
# 2. Applies sysusers.d and tmpfiles.d to that root (needs root to chown; parsed only otherwise).
# 3. `systemd-analyze verify` on every unit in units/: it fails on a missing ExecStart= binary
#    or dependency; any warning it prints (an unknown or misspelt key) is a failure too.
# 4. `systemd-analyze security --offline=true` on every .service: exposure must be under 2.0.
# 5. What systemd does not check: dragonfly.target wants exactly the services and sockets in
#    units/, each is PartOf= it, and every daemon Requires= and is After= dragonfly-migrate.
#
# Prints a table `unit  exposure  result` and exits 1 if anything failed, 2 on usage errors.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=${1:-${DRAGONFLY_BIN_DIR:-$repo/target/release}}
[ $# -le 1 ] || { echo "usage: $0 [BIN_DIR]" >&2; exit 2; }
[ -d "$bin_dir" ] || { echo "$0: no binary directory $bin_dir (run \`cargo build --release\`)" >&2; exit 2; }
bin_dir=$(cd "$bin_dir" && pwd)

# Exposure must be below 2.0. systemd 252 takes --threshold in tenths (and rejects "2.0");
# it fails when exposure > threshold, so 19 means "at most 1.9".
max_exposure_tenths=19

command -v systemd-analyze >/dev/null || { echo "$0: systemd-analyze not found (package systemd)" >&2; exit 2; }

root=$(mktemp -d "${TMPDIR:-/tmp}/dragonfly-units.XXXXXX")
trap 'rm -rf "$root"' EXIT

mkdir -p "$root/usr/lib/systemd/system" "$root/etc"
cp -a /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
DRAGONFLY_BIN_DIR=$bin_dir "$repo/packaging/install.sh" "$root" > /dev/null

failed=0
declare -A unit_failed=()
fail() { echo "FAIL: $*" >&2; failed=1; }
# fail_unit UNIT MESSAGE: also marks UNIT's row of the table.
fail_unit() { fail "$1: $2"; unit_failed[$1]=1; }

if [ "$(id -u)" -eq 0 ]; then
    out=$(systemd-sysusers --root="$root" 2>&1) || { echo "$out" >&2; fail "systemd-sysusers on sysusers.d/dragonfly.conf"; }
    systemd-tmpfiles --root="$root" --create || fail "systemd-tmpfiles on tmpfiles.d/dragonfly.conf"
    # Group names resolve against the temporary root's /etc/group, not the host's.
    gid=$(awk -F: '$1 == "dragonfly" { print $3 }' "$root/etc/group")
    got=$(stat -c '%a %u:%g' "$root/var/lib/dragonfly" 2>/dev/null || true)
    [ "$got" = "2770 0:$gid" ] || fail "/var/lib/dragonfly is '$got', want '2770 0:$gid' (root:dragonfly)"
else
    out=$(systemd-sysusers --root="$root" --dry-run 2>&1) ||
        { echo "$out" >&2; fail "systemd-sysusers --dry-run on sysusers.d/dragonfly.conf"; }
    echo "note: not root, so tmpfiles.d is not applied (it must chown)" >&2
fi

units=()
for path in "$repo"/units/*.service "$repo"/units/*.socket "$repo"/units/*.target \
            "$repo"/units/*.timer "$repo"/units/*.path; do
    [ -e "$path" ] && units+=("$(basename "$path")")
done
[ ${#units[@]} -gt 0 ] || { echo "$0: no units in $repo/units" >&2; exit 2; }

# Structure systemd cannot check: every service and socket is wanted by dragonfly.target and
# stops with it, and every daemon waits for the schema migration.
values() { sed -n "s/^$2=//p" "$repo/units/$1" | tr ' ' '\n' | sed '/^$/d'; }
wanted=$(values dragonfly.target Wants | sort -u)
for unit in "${units[@]}"; do
    case $unit in *.service | *.socket) ;; *) continue ;; esac
    grep -qx "$unit" <<< "$wanted" || fail_unit "$unit" "not in dragonfly.target's Wants="
    values "$unit" PartOf | grep -qx dragonfly.target || fail_unit "$unit" "no PartOf=dragonfly.target"
    if [[ $unit == *.service && $unit != dragonfly-migrate.service ]]; then
        for key in Requires After; do
            values "$unit" "$key" | grep -qx dragonfly-migrate.service ||
                fail_unit "$unit" "no $key=dragonfly-migrate.service"
        done
    fi
done
for unit in $wanted; do
    [ -e "$repo/units/$unit" ] || fail_unit dragonfly.target "wants $unit, which is not in units/"
done

printf '%-32s %-9s %s\n' unit exposure result
for unit in "${units[@]}"; do
    result=ok
    [ -z "${unit_failed[$unit]:-}" ] || result=FAIL
    # verify exits 0 on warnings such as "Unknown key": treat any output as a failure.
    if ! out=$(systemd-analyze verify --man=no --root="$root" "$unit" 2>&1) || [ -n "$out" ]; then
        printf '%s\n' "$out" | sed "s|$root||g" >&2
        fail_unit "$unit" "systemd-analyze verify"
        result=FAIL
    fi

    exposure=-
    if [[ $unit == *.service ]]; then
        rc=0
        sec=$(systemd-analyze security --offline=true --root="$root" \
                --threshold="$max_exposure_tenths" "$unit" 2>&1) || rc=$?
        exposure=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        if [ "$rc" -ne 0 ] || [ -z "$exposure" ]; then
            printf '%s\n' "$sec" | grep -E '✗|Overall|Failed|rror' >&2 || printf '%s\n' "$sec" >&2
            fail_unit "$unit" "exposure ${exposure:-unknown} is not below 2.0"
            result=FAIL
        fi
    fi
    printf '%-32s %-9s %s\n' "$unit" "$exposure" "$result"
done

exit "$failed"
