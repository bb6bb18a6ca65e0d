#!/bin/bash
# Image download benchmark: CLIENTS clients at once each fetch the same SIZE_MIB file from
# dragonfly-ipxed (release) and from nginx (Debian, sendfile on) serving the same file on
# loopback, in the same run; then the same with every client resuming from the middle
# (Range: bytes=N-). Prints, per server and case: aggregate throughput, server CPU-seconds per
# GiB sent (utime+stime from /proc/PID/stat before and after, nginx's master and workers
# summed), first-byte p50, the slowest client, client errors; ipxed's peak RSS (VmHWM); and
# ipxed/nginx ratios. Asserts nothing about speed (TARGETS.md: >= 0.9x nginx's throughput, CPU
# per GiB <= 1.5x nginx, RSS < 64 MiB, no client error).
#
#   integration/bench/images.sh                        # 100 clients, 1 GiB
#   CLIENTS=20 SIZE_MIB=256 integration/bench/images.sh
#   IPXED_BIN=/path/to/an/older/dragonfly-ipxed integration/bench/images.sh   # before/after
#
# ipxed serves it as a library image (/images/bench: a public Image added to the store with
# dragonfly-lab add-image, the file in images_dir), as agents download images; an IPXED_BIN
# from before the image route gets it among the agent's files (/agent/image.img). Both
# servers serve it from the page cache (it is read once before). The client is
# target/release/fetch-load: a thread per client, bodies discarded in the kernel (recv with
# MSG_TRUNC), so it costs little — but it runs on the same cores as the server it measures;
# its own CPU is printed too. Installs what it needs (packaging/deps.sh bench; root or sudo
# only for that).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=packaging/deps.sh
. "$repo/packaging/deps.sh"
deps_install build run bench
deps_cargo
clients=${CLIENTS:-100}
size_mib=${SIZE_MIB:-1024}
log_level=${LOG_LEVEL:-warn}

(cd "$repo" && cargo build --release --locked -p dragonfly-ipxed --bins --examples >&2 &&
    cargo build --release --locked -p dragonfly-integration --bin dragonfly-lab --bin fetch-load >&2)
target=${CARGO_TARGET_DIR:-$repo/target}
lab=$target/release/dragonfly-lab
load=$target/release/fetch-load
seed=$target/release/examples/seed-machines
bin=${IPXED_BIN:-$target/release/dragonfly-ipxed}

work=$(mktemp -d "${TMPDIR:-/tmp}/images-bench.XXXXXX")
chmod 0755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/agent" "$work/nginx" "$work/images"
echo "writing a ${size_mib} MiB image..." >&2
head -c "$((size_mib << 20))" /dev/urandom > "$work/images/image.img"
chmod 0644 "$work/images/image.img"
ln "$work/images/image.img" "$work/agent/image.img"
cat "$work/images/image.img" > /dev/null
size=$((size_mib << 20))
"$seed" "$work/dragonfly.db" 1 > /dev/null
head -c 32 /dev/urandom > "$work/key" && chmod 0600 "$work/key"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
"$lab" config --out "$work/dragonfly.toml" --store "$work/dragonfly.db" --nats nats://127.0.0.1:1 \
    --log-level "$log_level" --boot-token-key "$work/key" --ipxed "127.0.0.1:$port" \
    --public-url "http://127.0.0.1:$port" --apid-url http://127.0.0.1:3001 --agent-dir "$work/agent" \
    --images-dir "$work/images"
"$lab" add-image --store "$work/dragonfly.db" --name bench --file "$work/images/image.img" --public
# The image among the agent's files, and room for every client at once.
sed -i "/^\[ipxed\]\$/a agent_files = [\"vmlinuz\", \"initrd.img\", \"image.img\"]\nmax_file_transfers = $((clients > 256 ? clients : 256))" \
    "$work/dragonfly.toml"
# Every client comes from 127.0.0.1: lift the per-client cap (default 64) above them.
printf '\n[ipxed.http]\nmax_connections_per_client = %s\n' "$((clients > 64 ? clients : 64))" \
    >> "$work/dragonfly.toml"

# An ipxed from before max_file_transfers (IPXED_BIN, for a before/after figure) has no limit.
check=$("$bin" --config "$work/dragonfly.toml" --check-config 2>&1 || true)
if grep -qF 'unknown field' <<<"$check" && grep -qF max_file_transfers <<<"$check"; then
    sed -i '/^max_file_transfers = /d' "$work/dragonfly.toml"
    check=$("$bin" --config "$work/dragonfly.toml" --check-config 2>&1 || true)
fi
# One from before the image library serves the file among the agent's.
image_path=/images/bench
if grep -qF 'unknown field' <<<"$check" && grep -qF images_dir <<<"$check"; then
    sed -i '/^images_dir = /d' "$work/dragonfly.toml"
    image_path=/agent/image.img
fi
run=()
if [ "$(id -u)" -eq 0 ]; then
    chown -R nobody:nogroup "$work"
    run=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs --)
fi
"${run[@]}" "$bin" --config "$work/dragonfly.toml" 2> "$work/ipxed.log" &
ipxed_pid=$!
pids+=("$ipxed_pid")

nport=$(free_port)
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
$([ "$(id -u)" -eq 0 ] && echo "user nobody nogroup;")
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    types { application/octet-stream img; }
    server {
        listen 127.0.0.1:$nport;
        root $work/agent;
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" -g 'daemon off;' &
nginx_pid=$!
pids+=("$nginx_pid")

for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" &&
        curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$nport/image.img" && break
    sleep 0.1
done
curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$port$image_path" ||
    { echo "$0: ipxed does not serve the image" >&2; cat "$work/ipxed.log" >&2; exit 1; }

ticks=$(getconf CLK_TCK)
# cpu PID…: CPU-seconds (user + system) of the processes and, for nginx, its workers.
cpu() {
    local p all=() t=0
    for p in "$@"; do
        all+=("$p")
        mapfile -t -O "${#all[@]}" all < <(pgrep -P "$p" || true)
    done
    for p in "${all[@]}"; do
        # Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    awk -v t="$t" -v hz="$ticks" 'BEGIN { printf "%.2f", t / hz }'
}

field() { # LINE KEY
    sed -n "s/.* $2=\([^ ]*\).*/\1/p; s/^$2=\([^ ]*\).*/\1/p" <<<"$1" | head -n1
}

results=()
# measure SERVER CASE URL PID [RANGE_FROM]
measure() {
    local server=$1 case=$2 url=$3 pid=$4 from=${5:-} expect=$size args=() before after out
    if [ -n "$from" ]; then
        args=(--range-from "$from")
        expect=$((size - from))
    fi
    before=$(cpu "$pid")
    local TIMEFORMAT='%U %S'
    { time "$load" --url "$url" --clients "$clients" --expect-bytes "$expect" "${args[@]}" \
        > "$work/load.out" 2> "$work/load.err"; } 2> "$work/load.time"
    after=$(cpu "$pid")
    out=$(cat "$work/load.out")
    grep -v '^$' "$work/load.err" >&2 || true
    local gibs cpu_gib client
    gibs=$(awk -v b="$(field "$out" bytes)" 'BEGIN { printf "%.3f", b / 1073741824 }')
    cpu_gib=$(awk -v a="$after" -v b="$before" -v g="$gibs" 'BEGIN { printf "%.3f", (g > 0 ? (a - b) / g : 0) }')
    client=$(awk '{ printf "%.1f", $1 + $2 }' "$work/load.time")
    results+=("$case|$server|$(field "$out" gib_per_s)|$cpu_gib|$(field "$out" first_byte_p50_ms)|$(field "$out" done_max_s)|$(field "$out" errors)|$client|$gibs")
    echo "$case $server: $out" >&2
}

half=$((size / 2))
for case in full resume; do
    from=
    [ "$case" = resume ] && from=$half
    # nginx first, then ipxed, each once on a warm cache.
    measure nginx "$case" "http://127.0.0.1:$nport/image.img" "$nginx_pid" "$from"
    measure ipxed "$case" "http://127.0.0.1:$port$image_path" "$ipxed_pid" "$from"
done

hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$ipxed_pid/status")
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$ipxed_pid/status")
printf '%s clients at once, %s MiB file, loopback, %s cores; ipxed %s\n' "$clients" "$size_mib" "$(nproc)" "$bin"
printf '%-7s %-6s %10s %11s %15s %11s %7s %14s\n' case server "GiB/s" "CPU-s/GiB" "first byte p50" "slowest" errors "client CPU-s"
for r in "${results[@]}"; do
    IFS='|' read -r c s g cg fb dm e cl _ <<<"$r"
    printf '%-7s %-6s %10s %11s %12s ms %9s s %7s %14s\n' "$c" "$s" "$g" "$cg" "$fb" "$dm" "$e" "$cl"
done
for case in full resume; do
    n=() i=()
    for r in "${results[@]}"; do
        IFS='|' read -r c s g cg _ <<<"$r"
        [ "$c" = "$case" ] || continue
        if [ "$s" = nginx ]; then n=("$g" "$cg"); else i=("$g" "$cg"); fi
    done
    awk -v c="$case" -v ig="${i[0]}" -v ng="${n[0]}" -v ic="${i[1]}" -v nc="${n[1]}" 'BEGIN {
        printf "%-7s ipxed/nginx: throughput %.2fx (target >= 0.9), CPU per GiB %.2fx (target <= 1.5)\n",
            c, (ng > 0 ? ig / ng : 0), (nc > 0 ? ic / nc : 0) }'
done
printf 'ipxed RSS: peak (VmHWM) %s KiB, now %s KiB (target < 64 MiB)\n' "$hwm" "$rss"
