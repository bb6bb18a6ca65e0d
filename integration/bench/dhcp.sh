#!/bin/bash
# DHCP DORA benchmark: our release dragonfly-dhcpd vs Kea vs dnsmasq, driven by perfdhcp.
#
#   integration/bench/dhcp.sh [RATES] [SECONDS] [CLIENTS]    # defaults "2000 5000 10000 15000 20000" 10 60000
#   SERVERS="dragonfly kea" integration/bench/dhcp.sh ...     # a subset (default: all three)
#   DIAG=1 ...                                                # also print UDP error counters
#   NEW_CLIENTS=default ...                                   # dhcpd's default new-client limit
#   EXHAUSTED=1 integration/bench/dhcp.sh                     # dhcpd only: CPU per DISCOVER on a full /16
#
# Needs root; installs what it needs (packaging/deps.sh bench) and builds the release binaries.
# Everything runs in a lab network made by dragonfly-lab (integration/src/lab.rs) and removed
# on exit: the server namespace's bridge holds 10.200.0.1/16, a client namespace's eth0
# 10.200.0.2/16, joined to it by a veth. perfdhcp acts as a relay (giaddr = its address,
# unicast to the server's port 67), so every server is given the /16 that contains it, and
# dhcpd lists it in `relays`. Every DISCOVER of the benchmark comes from a MAC dhcpd has not
# seen, through that one relay: exactly what dhcpd's new-client limit (default 100/s after a
# burst of 2 000) is there to stop, so the benchmark lifts it (NEW_CLIENTS, default 1000000)
# to measure the DORA path itself; NEW_CLIENTS=default keeps dhcpd's defaults. Each (rate,
# server) point gets
# a freshly started server with an empty lease store. Prints a table (leases/s = completed
# DORA exchanges per second, loss = share of DISCOVERs that did not end in an ACK); asserts
# nothing about speed. Bounded: every point is SECONDS of load plus a few seconds of set-up and
# each process runs under `timeout`.
set -euo pipefail

rates=${1:-2000 5000 10000 15000 20000}
secs=${2:-10}
clients=${3:-60000}
servers=${SERVERS:-dragonfly kea dnsmasq}
new_clients=${NEW_CLIENTS:-1000000}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$repo/target/release
lab=$bin/dragonfly-lab
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root" >&2; exit 2; }
cd "$repo"
# shellcheck source=packaging/deps.sh
. packaging/deps.sh
deps_install build lab bench
deps_cargo
cargo build --release --locked -p dragonfly-dhcpd -p dragonfly-migrate >&2
cargo build --release --locked -p dragonfly-integration --bin dragonfly-lab >&2

tag=$$
sns=dfbs$tag; cns=dfbc$tag
work=$(mktemp -d /tmp/dhcp-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
    "$lab" down "$sns" || true
    rm -rf "$work"
}
trap cleanup EXIT

# The server listens on br0; dhcpd, run as nobody, binds port 67 itself.
"$lab" up "$sns" --addr 10.200.0.1/16 --no-ula --peer "$cns=10.200.0.2/16" --unprivileged-ports

stop_server() {
    for pid in $(ip netns pids $sns); do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do [ -z "$(ip netns pids $sns)" ] && return; sleep 0.1; done
    for pid in $(ip netns pids $sns); do kill -9 "$pid" 2>/dev/null || true; done
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
    local d=$work/df-$1 limits=""
    mkdir -p "$d"
    [ "$new_clients" = default ] || limits="--new-clients $new_clients"
    # shellcheck disable=SC2086 # $limits is empty or one option and its value
    "$lab" config --out "$d/dragonfly.toml" --store "$d/dragonfly.db" \
        --nats nats://127.0.0.1:1 --log-level warn \
        --dhcpd reservation --lease-time 1h --pxe-listen "" --relay 10.200.0.2 $limits \
        --subnet 10.200.0.0/16,10.200.1.0,10.200.255.250,10.200.0.1
    [ -z "${extra_toml:-}" ] || printf '%s\n' "$extra_toml" >> "$d/dragonfly.toml"
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
    "interfaces-config": { "interfaces": [ "br0/10.200.0.1" ], "dhcp-socket-type": "udp" },
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
        --dhcp-authoritative --dhcp-lease-max=100000 --bind-interfaces --interface=br0 \
        --listen-address=10.200.0.1 --except-interface=lo \
        --dhcp-range=10.200.1.0,10.200.255.250,255.255.0.0,1h \
        --dhcp-leasefile="$d/leases" --pid-file="$d/pid" --user=root --log-facility="$d/log" \
        > "$d/out" 2>&1 &)
    wait_port dnsmasq "$d/out"
}

# point SERVER RATE: prints "leases/s loss%" (loss: DISCOVERs without an ACK).
point() {
    # perfdhcp exits 3 whenever anything was dropped: the figures say how much.
    local out
    [ -n "${DIAG:-}" ] && { ip netns exec $sns nstat -n; ip netns exec $cns nstat -n; }
    out=$(timeout $((secs + 20)) ip netns exec $cns perfdhcp -r "$2" -R "$clients" -p "$secs" \
        -l eth0 10.200.0.1 2>&1) || true
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

# EXHAUSTED=1: lease every address of the /16 (perfdhcp DORA, new seeds until the pool is
# full), with 200 reservations configured, wait until dhcpd is idle, then send DISCOVERs from
# MACs it has never seen (20/s for 10 s) and print its CPU time per DISCOVER. This is the
# path a random-MAC flood hits once the pool is gone.
if [ -n "${EXHAUSTED:-}" ]; then
    extra_toml=$(for i in $(seq 1 200); do
        printf '[[dhcpd.reservations]]\nmac = "52:54:00:aa:00:%02x"\nip = "10.200.0.%d"\n' "$i" $((i + 9))
    done)
    secs=300 start_dragonfly exhausted
    pid=
    for p in $(ip netns pids $sns); do [ "$(cat /proc/"$p"/comm)" = dragonfly-dhcpd ] && pid=$p; done
    pool=65275
    for seed in 1 2 3 4 5 6 7 8; do
        timeout 60 ip netns exec $cns perfdhcp -s $seed -r 6000 -R 400000 -p 14 -l eth0 10.200.0.1 \
            > /dev/null 2>&1 || true
        n=$(dragonfly_leases exhausted)
        echo "filling: $n of $pool addresses leased" >&2
        [ "$n" -ge $pool ] && break
    done
    prev=-1
    while cpu=$(awk '{print $14 + $15}' /proc/"$pid"/stat) && [ "$cpu" != "$prev" ]; do
        prev=$cpu; sleep 1
    done
    out=$(timeout 30 ip netns exec $cns perfdhcp -b mac=0e:aa:00:00:00:00 -i -r 20 -R 1000000 -p 10 \
        -l eth0 10.200.0.1 2>&1) || true
    after=$(awk '{print $14 + $15}' /proc/"$pid"/stat)
    sent=$(echo "$out" | awk '/^sent packets:/ {print $3; exit}')
    got=$(echo "$out" | awk '/^received packets:/ {print $3; exit}')
    echo "full pool ($(dragonfly_leases exhausted) leases, 200 reservations): $sent DISCOVERs from new MACs," \
        "$got offers, dhcpd CPU $(( (after - cpu) * 10 )) ms:" \
        "$(python3 -c "print('%.2f' % (($after - $cpu) * 10.0 / max(1, ${sent:-0})))") ms per DISCOVER" \
        "(clock ticks of 10 ms)"
    exit 0
fi

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
echo "(perfdhcp -r RATE -R $clients -p $secs -l IF 10.200.0.1 from a client namespace; each point a fresh server; dhcpd new_clients_* = $new_clients)"
