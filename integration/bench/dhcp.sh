#!/bin/bash
# DHCP DORA benchmark: our release dragonfly-dhcpd vs dnsmasq vs Kea, driven by perfdhcp.
#
#   integration/bench/dhcp.sh [RATE] [SECONDS] [CLIENTS]     # defaults 20000 10 60000
#
# Needs root, `cargo build --release -p dragonfly-dhcpd -p dragonfly-migrate`, and the Debian
# packages kea-admin (perfdhcp), kea-dhcp4-server, dnsmasq-base, iproute2. Everything runs in
# two namespaces created here (server 10.200.0.1/16, client 10.200.0.2/16 on a veth) and
# removed on exit. perfdhcp acts as a relay (giaddr = its address), so every server is given
# the /16 that contains it. Prints a table; asserts nothing about speed. Bounded: each server
# gets SECONDS of load plus a few seconds of set-up.
set -euo pipefail

rate=${1:-20000}
secs=${2:-10}
clients=${3:-60000}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$repo/target/release
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root" >&2; exit 2; }
for t in perfdhcp kea-dhcp4 dnsmasq ip setpriv; do
    command -v $t >/dev/null || { echo "$0: $t not installed" >&2; exit 2; }
done
[ -x "$bin/dragonfly-dhcpd" ] && [ -x "$bin/dragonfly-migrate" ] ||
    { echo "$0: build first: cargo build --release -p dragonfly-dhcpd -p dragonfly-migrate" >&2; exit 2; }

tag=$$
sns=dfbs$tag; cns=dfbc$tag; sif=dfbs$tag; cif=dfbc$tag
work=$(mktemp -d /tmp/dhcp-bench.XXXXXX)
cleanup() {
    for ns in $sns $cns; do
        for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 $pid 2>/dev/null || true; done
        ip netns del $ns 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add $sns; ip netns add $cns
ip link add $sif netns $sns type veth peer name $cif netns $cns
ip -n $sns addr add 10.200.0.1/16 dev $sif; ip -n $cns addr add 10.200.0.2/16 dev $cif
for ns in $sns $cns; do ip -n $ns link set lo up; done
ip -n $sns link set $sif up; ip -n $cns link set $cif up
ip netns exec $sns sysctl -q -w net.ipv4.ip_unprivileged_port_start=0

# run_perfdhcp NAME: prints one table row.
run_perfdhcp() {
    local out
    out=$(timeout $((secs + 20)) ip netns exec $cns perfdhcp -r "$rate" -R "$clients" -p "$secs" -l $cif 10.200.0.1 2>&1 || true)
    echo "$out" > "$work/$1.perfdhcp"
    local r d1 d2
    r=$(echo "$out" | awk '/^Rate:/ {print $2; exit}')
    d1=$(echo "$out" | awk '/^drops ratio:/ {print $3}' | sed -n 1p)
    d2=$(echo "$out" | awk '/^drops ratio:/ {print $3}' | sed -n 2p)
    printf '%-22s %10s %10s %12s %12s\n' "$1" "$rate" "${r:-?}" "${d1:-?}%" "${d2:-?}%"
}

printf '%-22s %10s %10s %12s %12s\n' server offered/s DORA/s "drop D-O" "drop R-A"

# --- dragonfly-dhcpd (release), SQLite, every lease committed before its ACK ---------------
mkdir -p "$work/df"
cat > "$work/df/dragonfly.toml" <<TOML
[store]
path = "$work/df/dragonfly.db"
[nats]
url = "nats://127.0.0.1:1"
[log]
level = "warn"
[dhcpd]
mode = "reservation"
lease_time = "1h"
pxe_listen = ""
[[dhcpd.subnets]]
network = "10.200.0.0/16"
pool_start = "10.200.1.0"
pool_end = "10.200.255.250"
router = "10.200.0.1"
TOML
chown -R nobody:nogroup "$work/df"
chmod 755 "$work"
# Our tools refuse to run as root.
setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$bin/dragonfly-migrate" \
    --config "$work/df/dragonfly.toml" > "$work/df/migrate.log" 2>&1 ||
    { cat "$work/df/migrate.log" >&2; exit 1; }
ip netns exec $sns setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all \
    --bounding-set=-all --no-new-privs -- "$bin/dragonfly-dhcpd" --config "$work/df/dragonfly.toml" \
    2> "$work/df/log" &
sleep 1
run_perfdhcp dragonfly-dhcpd
leases=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from dhcp_leases').fetchone()[0])" "$work/df/dragonfly.db" 2>/dev/null || echo '?')
for pid in $(ip netns pids $sns); do kill $pid 2>/dev/null || true; done
sleep 1

# --- Kea 2.x, memfile ------------------------------------------------------------------------
mkdir -p "$work/kea"
cat > "$work/kea/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "$sif" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$work/kea/leases.csv", "lfc-interval": 0 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "10.200.0.0/16", "pools": [ { "pool": "10.200.1.0 - 10.200.255.250" } ],
                   "option-data": [ { "name": "routers", "data": "10.200.0.1" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "ERROR", "output_options": [ { "output": "$work/kea/log" } ] } ]
} }
JSON
KEA_PIDFILE_DIR=$work/kea KEA_LOCKFILE_DIR=$work/kea ip netns exec $sns kea-dhcp4 -c "$work/kea/kea.json" > "$work/kea/out" 2>&1 &
sleep 2
run_perfdhcp kea-dhcp4-memfile
for pid in $(ip netns pids $sns); do kill $pid 2>/dev/null || true; done
sleep 1

# --- dnsmasq, no ping, large lease table ------------------------------------------------------
mkdir -p "$work/dnsmasq"
ip netns exec $sns dnsmasq -k --port=0 --no-ping --dhcp-lease-max=200000 --bind-interfaces \
    --interface=$sif --dhcp-range=10.200.1.0,10.200.255.250,255.255.0.0,1h \
    --dhcp-leasefile="$work/dnsmasq/leases" --pid-file="$work/dnsmasq/pid" --log-facility=- \
    > "$work/dnsmasq/log" 2>&1 &
sleep 1
run_perfdhcp dnsmasq-no-ping
for pid in $(ip netns pids $sns); do kill $pid 2>/dev/null || true; done

echo
echo "dragonfly-dhcpd leases committed to SQLite: $leases"
echo "(perfdhcp -r $rate -R $clients -p $secs -l IF 10.200.0.1 from a client namespace)"
