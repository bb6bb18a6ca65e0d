#!/bin/bash
# DHCP DORA benchmark: our release dragonfly-dhcpd vs Kea vs dnsmasq, driven by perfdhcp.
#
#   integration/bench/dhcp.sh [RATES] [SECONDS] [CLIENTS]    # defaults "2000 5000 10000 15000 20000" 10 60000
#   SERVERS="dragonfly kea" integration/bench/dhcp.sh ...     # a subset (default: all three)
#   DIAG=1 ...                                                # also print UDP error counters
#
# Needs root, `cargo build --release -p dragonfly-dhcpd -p dragonfly-migrate`, and the Debian
# packages kea-admin (perfdhcp), kea-dhcp4-server, dnsmasq-base, iproute2. Everything runs in
# two namespaces created here (server 10.200.0.1/16, client 10.200.0.2/16 on a veth) and
# removed on exit. perfdhcp acts as a relay (giaddr = its address, unicast to the server's
# port 67), so every server is given the /16 that contains it. Each (rate, server) point gets
# a freshly started server with an empty lease store. Prints a table (leases/s = completed
# DORA exchanges per second, loss = share of DISCOVERs that did not end in an ACK); asserts
# nothing about speed. Bounded: every point is SECONDS of load plus a few seconds of set-up and
# each process runs under `timeout`.
set -euo pipefail

rates=${1:-2000 5000 10000 15000 20000}
secs=${2:-10}
clients=${3:-60000}
servers=${SERVERS:-dragonfly kea dnsmasq}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$repo/target/release
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root" >&2; exit 2; }
for t in perfdhcp kea-dhcp4 dnsmasq ip setpriv python3; do
    command -v $t >/dev/null || { echo "$0: $t not installed" >&2; exit 2; }
done
[ -x "$bin/dragonfly-dhcpd" ] && [ -x "$bin/dragonfly-migrate" ] ||
    { echo "$0: build first: cargo build --release -p dragonfly-dhcpd -p dragonfly-migrate" >&2; exit 2; }

tag=$$
sns=dfbs$tag; cns=dfbc$tag; sif=dfbs$tag; cif=dfbc$tag
work=$(mktemp -d /tmp/dhcp-bench.XXXXXX)
chmod 755 "$work"
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

stop_server() {
    for pid in $(ip netns pids $sns); do kill $pid 2>/dev/null || true; done
    for _ in $(seq 50); do [ -z "$(ip netns pids $sns)" ] && return; sleep 0.1; done
    for pid in $(ip netns pids $sns); do kill -9 $pid 2>/dev/null || true; done
    sleep 0.2
}

# wait_port: until something in the server namespace listens on UDP 67 (at most 10 s).
wait_port() {
    for _ in $(seq 100); do
        ip netns exec $sns ss -Hlun 'sport = :67' | grep -q . && return 0
        sleep 0.1
    done
    echo "$0: $1 did not start; its log:" >&2; cat "$2" >&2; return 1
}

# --- dragonfly-dhcpd (release), SQLite, every lease committed before its ACK ---------------
start_dragonfly() {
    local d=$work/df-$1
    mkdir -p "$d"
    cat > "$d/dragonfly.toml" <<TOML
[store]
path = "$d/dragonfly.db"
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
    chown -R nobody:nogroup "$d"
    # Our tools refuse to run as root.
    setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$bin/dragonfly-migrate" \
        --config "$d/dragonfly.toml" > "$d/migrate.log" 2>&1 ||
        { cat "$d/migrate.log" >&2; exit 1; }
    # In a subshell: bash reports nothing when stop_server kills it.
    (ip netns exec $sns timeout $((secs + 60)) setpriv --reuid=nobody --regid=nogroup \
        --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- \
        "$bin/dragonfly-dhcpd" --config "$d/dragonfly.toml" 2> "$d/log" &)
    wait_port dragonfly-dhcpd "$d/log"
}

dragonfly_leases() {
    python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from dhcp_leases').fetchone()[0])" \
        "$work/df-$1/dragonfly.db" 2>/dev/null || echo '?'
}

# --- Kea 2.x, memfile: UDP sockets (relayed unicast), everything under the work dir --------
start_kea() {
    local d=$work/kea-$1
    mkdir -p "$d"
    cat > "$d/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "$sif/10.200.0.1" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$d/leases.csv", "lfc-interval": 0 },
    "control-socket": { "socket-type": "unix", "socket-name": "$d/kea.sock" },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "10.200.0.0/16",
                   "pools": [ { "pool": "10.200.1.0 - 10.200.255.250" } ],
                   "option-data": [ { "name": "routers", "data": "10.200.0.1" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                   "output_options": [ { "output": "$d/log" } ] } ]
} }
JSON
    (ip netns exec $sns env KEA_PIDFILE_DIR="$d" KEA_LOCKFILE_DIR="$d" KEA_LOGGER_DESTINATION="$d/log" \
        timeout $((secs + 60)) kea-dhcp4 -c "$d/kea.json" > "$d/out" 2>&1 &)
    wait_port kea-dhcp4 "$d/out"
}

# --- dnsmasq 2.90: no ping, a lease table as large as the pool, on the veth address --------
start_dnsmasq() {
    local d=$work/dnsmasq-$1
    mkdir -p "$d"
    (ip netns exec $sns timeout $((secs + 60)) dnsmasq -k --port=0 --no-ping --no-resolv --no-hosts \
        --dhcp-authoritative --dhcp-lease-max=100000 --bind-interfaces --interface=$sif \
        --listen-address=10.200.0.1 --except-interface=lo \
        --dhcp-range=10.200.1.0,10.200.255.250,255.255.0.0,1h \
        --dhcp-leasefile="$d/leases" --pid-file="$d/pid" --user=root --log-facility="$d/log" \
        > "$d/out" 2>&1 &)
    wait_port dnsmasq "$d/out"
}

# point SERVER RATE: prints "leases/s loss%" (loss: DISCOVERs without an ACK).
point() {
    local out rc=0
    [ -n "${DIAG:-}" ] && { ip netns exec $sns nstat -n; ip netns exec $cns nstat -n; }
    out=$(timeout $((secs + 20)) ip netns exec $cns perfdhcp -r "$2" -R "$clients" -p "$secs" \
        -l $cif 10.200.0.1 2>&1) || rc=$?
    echo "$out" > "$work/$1-$2.perfdhcp"
    if [ -n "${DIAG:-}" ]; then
        echo "  [$1 @ $2/s] server: $(ip netns exec $sns nstat 2>/dev/null | awk '/Udp(InErrors|RcvbufErrors|SndbufErrors|InDatagrams|OutDatagrams)/ {printf "%s=%s ", $1, $2}')" >&2
        echo "  [$1 @ $2/s] client: $(ip netns exec $cns nstat 2>/dev/null | awk '/Udp(InErrors|RcvbufErrors|SndbufErrors|InDatagrams|OutDatagrams)/ {printf "%s=%s ", $1, $2}')" >&2
    fi
    echo "$out" | python3 -c '
import re, sys
t = sys.stdin.read()
rate = re.search(r"^Rate: ([0-9.]+)", t, re.M)
sent = [int(x) for x in re.findall(r"^sent packets: (\d+)", t, re.M)]
recv = [int(x) for x in re.findall(r"^received packets: (\d+)", t, re.M)]
if not rate or len(sent) < 2 or len(recv) < 2 or sent[0] == 0:
    print("? ?"); sys.exit()
# perfdhcp counts the last DISCOVERs of the run as lost; the loss is ACKs missing for DISCOVERs.
print("%.0f %.2f" % (float(rate.group(1)), 100.0 * (1 - recv[1] / sent[0])))
'
}

declare -A result
for rate in $rates; do
    for s in $servers; do
        "start_$s" "$rate"
        r=$(point "$s" "$rate")
        [ "$s" = dragonfly ] && r="$r $(dragonfly_leases "$rate")"
        result[$s,$rate]=$r
        stop_server
    done
done

echo
printf '%9s' offered/s
for s in $servers; do printf ' | %-24s' "$s leases/s (loss)"; done
echo " | dragonfly leases in SQLite"
for rate in $rates; do
    printf '%9s' "$rate"
    for s in $servers; do
        read -r lps loss _ <<< "${result[$s,$rate]}"
        printf ' | %-24s' "$lps ($loss %)"
    done
    read -r _ _ stored <<< "${result[dragonfly,$rate]:-? ? -}"
    echo " | ${stored:--}"
done
echo "(perfdhcp -r RATE -R $clients -p $secs -l IF 10.200.0.1 from a client namespace; each point a fresh server)"
