#!/bin/bash
# /boot/{mac} benchmark: dragonfly-ipxed (release) with N machines in the store, loaded by wrk
# on loopback with random known MACs. Prints requests/s and latency percentiles; asserts
# nothing about speed (TARGETS.md: >= 20k requests/s, p99 < 5 ms with 10 000 machines).
#
#   integration/bench/ipxed.sh                    # 10 000 machines, 10 s, 64 connections
#   MACHINES=1000 DURATION=5s CONNECTIONS=16 LOG_LEVEL=warn integration/bench/ipxed.sh
#
# Every machine is Registered, so every answer is the heaviest path: store read, token minted,
# agent script rendered, BootDecided published (to a nats-server when one is installed).
# Binary: $IPXED_BIN, else target/release/dragonfly-ipxed; the seeding example is built here.
# Installs what it needs (packaging/deps.sh bench; root or sudo only for that).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=packaging/deps.sh
. "$repo/packaging/deps.sh"
deps_install build run bench
deps_cargo
machines=${MACHINES:-10000}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
log_level=${LOG_LEVEL:-info}

(cd "$repo" && cargo build --release --locked -p dragonfly-ipxed --bins --examples >&2 &&
    cargo build --release --locked -p dragonfly-integration --bin dragonfly-lab >&2)
lab=$repo/target/release/dragonfly-lab
bin=${IPXED_BIN:-$repo/target/release/dragonfly-ipxed}
seed=$repo/target/release/examples/seed-machines

work=$(mktemp -d "${TMPDIR:-/tmp}/ipxed-bench.XXXXXX")
chmod 0755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "seeding $machines machines..." >&2
t0=$SECONDS
"$seed" "$work/dragonfly.db" "$machines" > "$work/macs.txt"
echo "seeded in $((SECONDS - t0)) s" >&2
mkdir "$work/agent"
head -c 32 /dev/urandom > "$work/key" && chmod 0600 "$work/key"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_url=nats://127.0.0.1:1
if command -v nats-server >/dev/null; then
    nport=$(free_port)
    nats-server -a 127.0.0.1 -p "$nport" > "$work/nats.log" 2>&1 &
    pids+=($!)
    nats_url=nats://127.0.0.1:$nport
fi
port=$(free_port)
"$lab" config --out "$work/dragonfly.toml" --store "$work/dragonfly.db" --nats "$nats_url" \
    --log-level "$log_level" --boot-token-key "$work/key" --ipxed "127.0.0.1:$port" \
    --public-url "http://127.0.0.1:$port" --apid-url http://127.0.0.1:3001 --agent-dir "$work/agent"

run=()
if [ "$(id -u)" -eq 0 ]; then
    chown -R nobody:nogroup "$work"
    run=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs --)
fi
"${run[@]}" "$bin" --config "$work/dragonfly.toml" 2> "$work/ipxed.log" &
pids+=($!)
ipxed_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
first=$(head -n1 "$work/macs.txt")
curl -sf "http://127.0.0.1:$port/boot/$first?platform=efi&arch=x86_64" | grep -q 'dragonfly.mode=discovery' ||
    { echo "$0: ipxed did not answer a boot request" >&2; cat "$work/ipxed.log" >&2; exit 1; }

cat > "$work/random-mac.lua" <<'LUA'
local macs = {}
for line in io.lines(os.getenv("MACS")) do macs[#macs + 1] = line end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("GET", "/boot/" .. macs[math.random(#macs)] .. "?platform=efi&arch=x86_64")
end
LUA
echo "warm-up..." >&2
MACS=$work/macs.txt wrk -t"$threads" -c"$connections" -d2s -s "$work/random-mac.lua" "http://127.0.0.1:$port" > /dev/null
MACS=$work/macs.txt wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$work/random-mac.lua" \
    "http://127.0.0.1:$port" > "$work/wrk.txt"
rss_kib=$(awk '/^VmRSS/ { print $2 }' "/proc/$ipxed_pid/status" 2>/dev/null || echo "?")

rps=$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk.txt")
p50=$(awk '$1 == "50%" { print $2 }' "$work/wrk.txt")
p90=$(awk '$1 == "90%" { print $2 }' "$work/wrk.txt")
p99=$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")
errors=$(grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" || true)
printf '%-34s %s\n' "machines in store" "$machines" \
    "wrk" "$threads threads, $connections connections, $duration, log level $log_level" \
    "requests/s" "$rps" "latency p50 / p90 / p99" "$p50 / $p90 / $p99" \
    "ipxed RSS after load" "${rss_kib} KiB" "errors" "${errors:-none}"
