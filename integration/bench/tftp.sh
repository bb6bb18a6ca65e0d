#!/bin/bash
# TFTP benchmark: dragonfly-tftpd (release) against tftpd-hpa and dnsmasq, side by side, in a
# lab network (dragonfly-lab: the server namespace's bridge, a client namespace joined to it by
# a veth). Prints a table; asserts nothing about speed (figures drift between runs and
# machines: compare ratios from one run). Needs root; installs what it needs
# (packaging/deps.sh bench).
#
#   integration/bench/tftp.sh            # everything (about 5 minutes: the peers are slow on loss)
#   LOSSY_PEERS=0 integration/bench/tftp.sh   # skip the peers' lossy runs (their figures are
#                                             # in shared/TARGETS.md), about 1 minute
#
# Binary: $TFTPD_BIN, else target/release/dragonfly-tftpd (built here if missing).
# Tests: 32 MiB one client (curl blksize 1468; atftp blksize 1468 windowsize 16), 50 curl
# clients x 1 MiB at once (aggregate MiB/s, every copy compared), 1 MiB over 10 % loss on each
# side (curl --connect-timeout 3, so it asks timeout 1): seconds. Every download is compared
# with cmp; a damaged file prints FAIL instead of a figure. The 50 x 100 B row (seconds) is the
# floor of the 50-client test: curl's own start-up and the exchange of one request, which no
# server can remove; read the 50 x 1 MiB ratio against it.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root (network namespaces)" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
# shellcheck source=packaging/deps.sh
. packaging/deps.sh
deps_install build run lab bench
deps_cargo
cargo build --release --locked -p dragonfly-integration --bin dragonfly-lab >&2
lab=$repo/target/release/dragonfly-lab
bin=${TFTPD_BIN:-$repo/target/release/dragonfly-tftpd}
if [ ! -x "$bin" ]; then
    cargo build --release --locked -p dragonfly-tftpd >&2
fi
lossy_peers=${LOSSY_PEERS:-1}
limit=240   # seconds any single client may take

tag=$$
S=dfb${tag}s C=dfb${tag}c
tmp=$(mktemp -d /tmp/dragonfly-tftp-bench.XXXXXX)
chmod 755 "$tmp"
server_pid=

cleanup() {
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
    "$lab" down "$S" || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# Our daemon runs as nobody and binds port 69 itself inside the server namespace.
"$lab" up "$S" --addr 10.201.0.1/24 --no-ula --peer "$C=10.201.0.2/24" --unprivileged-ports

root=$tmp/root
mkdir -p "$root" "$tmp/out"
head -c $((32 << 20)) /dev/urandom > "$root/big.bin"
head -c $((1 << 20)) /dev/urandom > "$root/small.bin"
head -c 100 /dev/urandom > "$root/tiny.bin"
chmod -R a+rX "$root"; chmod 777 "$tmp/out"
"$lab" config --out "$tmp/dragonfly.toml" --nats nats://127.0.0.1:1 --log-level warn \
    --tftp-root "$root" --tftpd-listen 10.201.0.1:69

start() {
    case $1 in
    ours) ip netns exec "$S" setpriv --reuid=nobody --regid=nogroup --clear-groups \
              --inh-caps=-all --bounding-set=-all --no-new-privs \
              "$bin" --config "$tmp/dragonfly.toml" 2>"$tmp/ours.log" & ;;
    hpa) ip netns exec "$S" in.tftpd -L -s "$root" -a 10.201.0.1:69 & ;;
    dnsmasq) ip netns exec "$S" dnsmasq -k --conf-file=/dev/null --port=0 --enable-tftp \
                 --tftp-root="$root" --tftp-max=200 --listen-address=10.201.0.1 \
                 --bind-interfaces --pid-file="$tmp/dnsmasq.pid" --user=root & ;;
    esac
    server_pid=$!
    sleep 0.5
}
stop() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=; }

now() { date +%s.%N; }
# in_client CMD…: runs in the client namespace, bounded.
in_client() { ip netns exec "$C" timeout "$limit" "$@"; }
curl_get() { in_client curl -sS --tftp-blksize 1468 "$@"; }

# Each measurement prints one number or FAIL.
one_curl() {
    rm -f "$tmp/out/big"
    local t0; t0=$(now)
    curl_get -o "$tmp/out/big" tftp://10.201.0.1/big.bin || { echo FAIL; return; }
    local t1; t1=$(now)
    cmp -s "$tmp/out/big" "$root/big.bin" || { echo FAIL; return; }
    echo "$t0 $t1" | awk '{ printf "%.1f", 32 / ($2 - $1) }'
}
one_atftp() {
    rm -f "$tmp/out/big"
    local t0; t0=$(now)
    in_client atftp --option "blksize 1468" --option "windowsize 16" -g -r big.bin \
        -l "$tmp/out/big" 10.201.0.1 69 >/dev/null 2>&1 || { echo FAIL; return; }
    local t1; t1=$(now)
    cmp -s "$tmp/out/big" "$root/big.bin" || { echo FAIL; return; }
    echo "$t0 $t1" | awk '{ printf "%.1f", 32 / ($2 - $1) }'
}
fifty() { # [file] [mode]: mode "rate" prints aggregate MiB/s (1 MiB files), else seconds
    local file=${1:-small.bin} mode=${2:-rate}
    rm -f "$tmp"/out/c*
    local t0; t0=$(now)
    local pids=() ok=1
    for i in $(seq 1 50); do
        curl_get -o "$tmp/out/c$i" "tftp://10.201.0.1/$file" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || ok=0; done
    local t1; t1=$(now)
    for i in $(seq 1 50); do cmp -s "$tmp/out/c$i" "$root/$file" || ok=0; done
    [ "$ok" = 1 ] || { echo FAIL; return; }
    if [ "$mode" = rate ]; then
        echo "$t0 $t1" | awk '{ printf "%.1f", 50 / ($2 - $1) }'
    else
        echo "$t0 $t1" | awk '{ printf "%.2f", $2 - $1 }'
    fi
}
lossy() {
    rm -f "$tmp/out/lossy"
    local t0; t0=$(now)
    curl_get --connect-timeout 3 -o "$tmp/out/lossy" tftp://10.201.0.1/small.bin || { echo FAIL; return; }
    local t1; t1=$(now)
    cmp -s "$tmp/out/lossy" "$root/small.bin" || { echo FAIL; return; }
    echo "$t0 $t1" | awk '{ printf "%.1f", $2 - $1 }'
}

declare -A r
for s in ours hpa dnsmasq; do
    echo "clean link: $s" >&2
    start "$s"
    r[$s,curl]=$(one_curl)
    r[$s,atftp]=$(one_atftp)
    r[$s,fifty]=$(fifty)
    r[$s,tiny]=$(fifty tiny.bin seconds)
    stop
done

# On what each side receives: the server's veth port on br0, the client's eth0.
for pair in "$S peer0" "$C eth0"; do
    read -r ns dev <<<"$pair"
    printf 'table netdev loss {\n chain in {\n  type filter hook ingress device "%s" priority 0;\n  numgen random mod 100 < 10 counter drop\n }\n}\n' "$dev" |
        ip netns exec "$ns" nft -f -
done
for s in ours hpa dnsmasq; do
    r[$s,lossy]=skipped
    [ "$s" = ours ] || [ "$lossy_peers" = 1 ] || continue
    echo "10 % loss: $s" >&2
    start "$s"
    r[$s,lossy]=$(lossy)
    stop
done

ratio() { # ours peer higher_is_better
    awk -v a="$1" -v b="$2" -v hib="$3" 'BEGIN {
        if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || a == 0 || b == 0) { print "-"; exit }
        printf "%.1fx", (hib ? a / b : b / a) }'
}
printf '\n%-50s %10s %10s %10s %9s %9s\n' test ours tftpd-hpa dnsmasq vs-hpa vs-dnsmasq
row() { # name key higher_is_better
    printf '%-50s %10s %10s %10s %9s %9s\n' "$1" "${r[ours,$2]}" "${r[hpa,$2]}" "${r[dnsmasq,$2]}" \
        "$(ratio "${r[ours,$2]}" "${r[hpa,$2]}" "$3")" "$(ratio "${r[ours,$2]}" "${r[dnsmasq,$2]}" "$3")"
}
row "32 MiB, curl blksize 1468 (MiB/s)" curl 1
row "32 MiB, atftp blksize 1468 windowsize 16 (MiB/s)" atftp 1
row "50 curl clients x 1 MiB (aggregate MiB/s)" fifty 1
row "50 curl clients x 100 B (seconds: client floor)" tiny 0
row "1 MiB, 10 % loss, curl timeout 1 (seconds)" lossy 0
echo "(ratios: how many times better ours is; peers ignore windowsize, atftp then runs lock-step)"
