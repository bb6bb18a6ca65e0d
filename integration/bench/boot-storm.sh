#!/bin/bash
# Boot storm: CLIENTS simulated PXE machines (default 1000) boot at once through the whole
# network boot path — DHCP, TFTP of undionly.kpxe, the iPXE script, the agent's kernel and
# initrd — against Dragonfly (dragonfly-dhcpd in reservation mode, dragonfly-tftpd,
# dragonfly-ipxed, release builds, a nats-server when one is installed) and, in the same run,
# against the peer: dnsmasq (DHCP + TFTP) and nginx (HTTP: the same kind of script as a static
# file per MAC, and the same kernel and initrd). Prints, per side: clients booted, wall time
# from the first DISCOVER to the last byte, p50/p99 of each client's own boot time, the
# phases' shares, server CPU-seconds (utime+stime from /proc/PID/stat before and after, every
# server process and its children summed), bytes served, CPU per GiB; then Dragonfly/peer
# ratios. Lists why clients failed, counted. Asserts nothing about speed (TARGETS.md: every
# machine boots; wall <= 1.2x the peer; server CPU per GiB <= 1.5x nginx).
#
#   integration/bench/boot-storm.sh                 # 1000 clients, both sides
#   CLIENTS=100 integration/bench/boot-storm.sh     # a quick sanity check
#   SIDES=dragonfly integration/bench/boot-storm.sh # one side only (SIDES="peer dragonfly")
#   AGENT_DIR=/path/with/vmlinuz+initrd.img …       # default target/agent-image (agent-image/build.sh)
#   LOG_LEVEL=info …                                # the daemons' log level (default warn)
#   KEEP=1 …                                        # keep the work directory (every server's log)
#   MAX_FILE_TRANSFERS=256 …                        # ipxed's [ipxed] max_file_transfers (default: its own, 1024)
#   MAX_TRANSFERS=1024 …                            # tftpd's [tftpd] max_transfers (default: its own, 256)
#
# How the clients reach the servers (target/release/boot-storm, integration/src/bin/boot-storm.rs,
# says more): a lab network from dragonfly-lab, the server namespace's br0 10.200.0.1/14 and a
# client namespace's eth0 10.200.0.2/14 on a veth. DHCP goes as from a relay agent (like
# perfdhcp in bench/dhcp.sh): unicast from 10.200.0.2:67 with giaddr 10.200.0.2, answers back
# to it; so dhcpd lists that relay, and dnsmasq serves it from its range in that /14. Both
# servers lease from the same /16 pool, 10.202.0.0/16 (as dhcp.sh's), which the client
# namespace treats as local
# (`ip route add local … dev lo`) and the server namespace routes to it: each client then
# speaks TFTP and HTTP from its own leased address, as a real machine does — which ipxed's
# admission needs (a token only for the address dhcpd leased that MAC).
#
# Choices, stated: TFTP asks tsize and blksize 1456 lock-step, as a BIOS PXE ROM does (no
# windowsize: that is iPXE's, and iPXE here only does HTTP). iPXE's own second DHCP exchange
# is not played: each client asks the script URL the server's configuration would give it
# (Dragonfly: /boot/{mac}?platform=pcbios; nginx: /boot/{mac}, a static file). MACs are
# scattered, not sequential: dnsmasq offers neighbouring MACs the same addresses and NAKs
# all but one (see boot-storm.rs), which is not what this measures. DHCP answers
# are waited for 1, 2, 4 and 8 s (then the client gives up); a 503 is retried after its
# Retry-After, as the agent script does, up to 6 times. dnsmasq runs with --no-ping (as in
# bench/dhcp.sh) and --tftp-max=$CLIENTS (its default, 50, refuses the rest of a storm). Each
# daemon runs with the LimitNOFILE of its unit (nginx: worker_rlimit_nofile 8192), dhcpd with
# its default new-client limit (a burst of 2 000 per relay: a storm of up to 1 999 fits),
# ipxed with its default max_file_transfers (1024: any more get 503 and come back). The
# Dragonfly daemons are socket-activated (systemd-socket-activate), as under systemd, and
# run as nobody without capabilities; one warm-up client boots through each side first.
#
# Needs root (network namespaces); installs what it needs (packaging/deps.sh) and builds the
# release binaries. Bounded: every client gives up within about a minute.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (network namespaces)" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
# shellcheck source=packaging/deps.sh
. packaging/deps.sh
deps_install build run lab bench
deps_cargo
clients=${CLIENTS:-1000}
sides=${SIDES:-peer dragonfly}
log_level=${LOG_LEVEL:-warn}
agent_src=${AGENT_DIR:-$repo/target/agent-image}
cargo build --release --locked -p dragonfly-dhcpd -p dragonfly-tftpd -p dragonfly-ipxed \
    -p dragonfly-migrate --bins >&2
cargo build --release --locked -p dragonfly-integration --bin dragonfly-lab --bin boot-storm >&2
bin=${CARGO_TARGET_DIR:-$repo/target}/release
lab=$bin/dragonfly-lab
storm=$bin/boot-storm

tag=$$
S=dfst${tag}s C=dfst${tag}c
server=10.200.0.1 relay=10.200.0.2 pool=10.202.0.0/16
work=$(mktemp -d /tmp/boot-storm.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    "$lab" down "$S" || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work (logs, leases)" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

"$lab" up "$S" --addr "$server/14" --no-ula --peer "$C=$relay/14" --unprivileged-ports
ip netns exec "$S" ip route add "$pool" via "$relay"
ip netns exec "$C" ip route add local "$pool" dev lo
# As many descriptors as allowed (the clients hold two each); the daemons get their units'.
hard_nofile=$(ulimit -Hn)
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
ulimit -n "$hard_nofile"

# --- the files both sides serve -----------------------------------------------------------
mkdir -p "$work/tftp" "$work/agent" "$work/www/boot" "$work/nginx"
cp -L /usr/lib/ipxe/undionly.kpxe "$work/tftp/undionly.kpxe"
if [ -f "$agent_src/vmlinuz" ] && [ -f "$agent_src/initrd.img" ]; then
    cp "$agent_src/vmlinuz" "$agent_src/initrd.img" "$work/agent/"
    agent_what="the agent image's files ($agent_src)"
else
    # The sizes of agent-image/build.sh's files (docs/performance.md, "Agent").
    head -c 8247232 /dev/urandom > "$work/agent/vmlinuz"
    head -c 8804367 /dev/urandom > "$work/agent/initrd.img"
    agent_what="random files of the agent image's sizes (no $agent_src/vmlinuz)"
fi
cat "$work/agent/"* "$work/tftp/"* > /dev/null
kernel_bytes=$(stat -c %s "$work/agent/vmlinuz")
initrd_bytes=$(stat -c %s "$work/agent/initrd.img")
tftp_bytes=$(stat -c %s "$work/tftp/undionly.kpxe")

# nginx's scripts: what ipxed's agent template renders for a discovery boot, pointing at
# nginx, with a token-shaped word in place of the token.
token=$(head -c 96 /dev/urandom | base64 -w0 | tr '+/' '-_' | head -c 128)
{ "$storm" --print-macs --clients "$clients"; "$storm" --print-macs --clients 1 --mac-prefix 0e:df:ff; } |
    awk -v dir="$work/www/boot" -v url="http://$server:8081" -v srv="$server" -v tok="$token" '{
        f = dir "/" $1
        print "#!ipxe" > f
        print "# Dragonfly: discovery for " $1 >> f
        print "# platform pcbios, arch x86_64" >> f
        print "echo Dragonfly: booting the agent in discovery mode" >> f
        print ":retry" >> f
        print "kernel " url "/agent/vmlinuz initrd=initrd.img dragonfly.url=http://" srv ":3001 dragonfly.mode=discovery dragonfly.mac=" $1 " dragonfly.token=" tok " || goto failed" >> f
        print "initrd --name initrd.img " url "/agent/initrd.img || goto failed" >> f
        print "boot || goto failed" >> f
        print ":failed" >> f
        print "echo Dragonfly: loading the agent failed (${errno}), retrying in 10 s" >> f
        print "imgfree" >> f
        print "sleep 10" >> f
        print "goto retry" >> f
        close(f)
    }'
chmod -R a+rX "$work"

ticks=$(getconf CLK_TCK)
# cpu PID…: CPU-seconds (user + system) of the processes and their children (nginx's workers).
cpu() {
    local p all=() t=0
    for p in "$@"; do
        all+=("$p")
        mapfile -t -O "${#all[@]}" all < <(pgrep -P "$p" || true)
    done
    for p in "${all[@]}"; do
        [ -r "/proc/$p/stat" ] || continue
        # Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    awk -v t="$t" -v hz="$ticks" 'BEGIN { printf "%.2f", t / hz }'
}
field() { # LINE KEY
    sed -n "s/.* $2=\([^ ]*\).*/\1/p; s/^$2=\([^ ]*\).*/\1/p" <<<"$1" | head -n1
}
wait_udp() { # PORT
    for _ in $(seq 100); do
        ip netns exec "$S" ss -Hlun "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    echo "$0: nothing listens on UDP $1" >&2; return 1
}
wait_tcp() { # PORT
    for _ in $(seq 100); do
        ip netns exec "$S" ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    echo "$0: nothing listens on TCP $1" >&2; return 1
}
# run_storm SIDE PREFIX N URL [--expect-token]: the simulator in the client namespace.
run_storm() {
    local side=$1 prefix=$2 n=$3 url=$4
    shift 4
    ip netns exec "$C" timeout 300 "$storm" --clients "$n" --mac-prefix "$prefix" \
        --dhcp-server "$server:67" --relay "$relay" --script-url "$url" \
        --tftp-expect "$work/tftp/undionly.kpxe" "$@" 2> "$work/$side-$prefix.err"
}
show_logs() {
    local f
    for f in "$@"; do echo "--- $f" >&2; tail -n 30 "$f" >&2 || true; done
}

declare -A result
# measure SIDE URL PIDS [--expect-token]: warm-up client, then the storm.
measure() {
    local side=$1 url=$2 procs=$3 out warm p a total=0 name delta parts=()
    local -A before
    shift 3
    warm=$(run_storm "$side" 0e:df:ff 1 "$url" "$@")
    if [ "$(field "$warm" booted)" != 1 ]; then
        echo "$0: the warm-up client did not boot through $side: $warm" >&2
        cat "$work/$side-0e:df:ff.err" >&2
        return 1
    fi
    for p in $procs; do before[$p]=$(cpu "$p"); done
    echo "storm: $clients clients through $side..." >&2
    local TIMEFORMAT='%U %S'
    { time run_storm "$side" 0e:df:01 "$clients" "$url" "$@" > "$work/$side.out"; } 2> "$work/$side.time"
    out=$(cat "$work/$side.out")
    for p in $procs; do
        a=$(cpu "$p")
        name=$(cat "/proc/$p/comm" 2>/dev/null || echo "$p:exited")
        delta=$(awk -v a="$a" -v b="${before[$p]}" 'BEGIN { printf "%.2f", a - b }')
        total=$(awk -v t="$total" -v d="$delta" 'BEGIN { printf "%.2f", t + d }')
        parts+=("$name=$delta")
        case $name in nginx | dragonfly-ipxed) result[$side,http_cpu]=$delta ;; esac
    done
    echo "$side: $out" >&2
    cat "$work/$side-0e:df:01.err" >&2
    result[$side]="$out server_cpu_s=$total client_cpu_s=$(awk '{ printf "%.2f", $1 + $2 }' "$work/$side.time")"
    result[$side,procs]="${parts[*]}"
}

stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    pids=()
}

# --- the peer: dnsmasq (DHCP + TFTP) and nginx (HTTP) -------------------------------------
run_peer() {
    local d=$work/peer
    mkdir -p "$d"
    ip netns exec "$S" dnsmasq -k --port=0 --no-ping --no-resolv --no-hosts --conf-file=/dev/null \
        --dhcp-authoritative --dhcp-lease-max=100000 --bind-interfaces --interface=br0 \
        --except-interface=lo --listen-address="$server" \
        --dhcp-range=10.202.0.1,10.202.255.254,255.252.0.0,1h \
        --dhcp-boot="undionly.kpxe,,$server" --enable-tftp --tftp-root="$work/tftp" \
        --tftp-max="$clients" --dhcp-leasefile="$d/leases" --pid-file="$d/pid" --user=root \
        --log-facility="$d/dnsmasq.log" > "$d/dnsmasq.out" 2>&1 &
    pids+=($!)
    local dnsmasq_pid=$!
    cat > "$work/nginx/nginx.conf" <<EOF
worker_processes auto;
worker_rlimit_nofile 8192;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
user nobody nogroup;
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
    default_type application/octet-stream;
    server {
        listen $server:8081;
        location /boot/ { alias $work/www/boot/; default_type text/plain; }
        location /agent/ { alias $work/agent/; }
    }
}
EOF
    ip netns exec "$S" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
        -g 'daemon off;' &
    pids+=($!)
    local nginx_pid=$!
    if ! { wait_udp 67 && wait_udp 69 && wait_tcp 8081; }; then
        show_logs "$d/dnsmasq.out" "$work/nginx/error.log"
        exit 1
    fi
    measure peer "http://$server:8081/boot/{mac}?platform=pcbios" "$dnsmasq_pid $nginx_pid" ||
        { show_logs "$d/dnsmasq.log" "$work/nginx/error.log"; exit 1; }
    result[peer,leases]=$(grep -c . "$d/leases" || true)
    stop_all
}

# --- Dragonfly: dhcpd, tftpd, ipxed (and nats-server) -------------------------------------
run_dragonfly() {
    local d=$work/df nats_url=nats://127.0.0.1:1 procs=""
    mkdir -p "$d"
    head -c 32 /dev/urandom > "$d/key"
    chmod 0600 "$d/key"
    # Debian's (the packaged bus); a pyenv shim on PATH would not run as nobody.
    local nats
    nats=$(command -v /usr/sbin/nats-server nats-server | head -n1 || true)
    if [ -n "$nats" ]; then
        ip netns exec "$S" setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
            "$nats" -a 127.0.0.1 -p 4222 > "$d/nats.log" 2>&1 &
        pids+=($!)
        procs="$!"
        nats_url=nats://127.0.0.1:4222
    fi
    "$lab" config --out "$d/dragonfly.toml" --store "$d/dragonfly.db" --nats "$nats_url" \
        --log-level "$log_level" --boot-token-key "$d/key" \
        --ipxed "$server:8080" --public-url "http://$server:8080" --apid-url "http://$server:3001" \
        --agent-dir "$work/agent" --ipxe-dir "$work/tftp" --tftp-root "$work/tftp" \
        --dhcpd reservation --server-ip "$server" --dhcpd-ipxed "$server:8080" --lease-time 1h \
        --pxe-listen "" --relay "$relay" --subnet "10.200.0.0/14,10.202.0.1,10.202.255.254,$server"
    if [ -n "${MAX_FILE_TRANSFERS:-}" ]; then
        sed -i "/^\[ipxed\]\$/a max_file_transfers = $MAX_FILE_TRANSFERS" "$d/dragonfly.toml"
    fi
    if [ -n "${MAX_TRANSFERS:-}" ]; then
        sed -i "/^\[tftpd\]\$/a max_transfers = $MAX_TRANSFERS" "$d/dragonfly.toml"
    fi
    chown -R nobody:nogroup "$d"
    setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$bin/dragonfly-migrate" \
        --config "$d/dragonfly.toml" > "$d/migrate.log" 2>&1 || { cat "$d/migrate.log" >&2; exit 1; }
    local name nofile args
    confined=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all
        --bounding-set=-all --no-new-privs --)
    # NAME NOFILE systemd-socket-activate's arguments (as the units' .socket files bind).
    for spec in "dhcpd 1024 -d --listen=0.0.0.0:67 --fdname=dhcp" \
        "tftpd 131136 -d --listen=0.0.0.0:69 --fdname=tftp" \
        "ipxed 4096 --listen=$server:8080 --fdname=http"; do
        read -r name nofile args <<<"$spec"
        # Not above this host's hard limit (raising it needs CAP_SYS_RESOURCE).
        [ "$nofile" -le "$hard_nofile" ] || nofile=$hard_nofile
        # shellcheck disable=SC2086 # $args: systemd-socket-activate's options
        ip netns exec "$S" prlimit --nofile="$nofile" systemd-socket-activate $args \
            "${confined[@]}" "$bin/dragonfly-$name" --config "$d/dragonfly.toml" 2> "$d/$name.log" &
        pids+=($!)
        procs="$procs $!"
    done
    if ! { wait_udp 67 && wait_udp 69 && wait_tcp 8080; }; then exit 1; fi
    if [ -n "$nats" ] && ! wait_tcp 4222; then show_logs "$d/nats.log"; exit 1; fi
    if ! measure dragonfly "http://$server:8080/boot/{mac}?platform=pcbios" "$procs" --expect-token; then
        show_logs "$d/dhcpd.log" "$d/tftpd.log" "$d/ipxed.log"
        exit 1
    fi
    result[dragonfly,leases]=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from dhcp_leases').fetchone()[0])" \
        "$d/dragonfly.db" 2>/dev/null || echo '?')
    grep -h 'WARN\|ERROR' "$d/dhcpd.log" "$d/tftpd.log" "$d/ipxed.log" | tail -n 20 >&2 || true
    stop_all
}

for side in $sides; do "run_$side"; done

# --- the report ---------------------------------------------------------------------------
echo
printf '%s clients at once; TFTP undionly.kpxe %s B; kernel %s B, initrd %s B: %s; %s cores, load %s\n' \
    "$clients" "$tftp_bytes" "$kernel_bytes" "$initrd_bytes" "$agent_what" "$(nproc)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-10s %9s %7s %7s %7s %6s %6s %6s %8s %7s %6s %9s %7s %8s\n' side booted wall_s p50_s \
    p99_s DHCP_s TFTP_s HTTP_s server_CPU GiB GiB/s CPU-s/GiB leases clientCPU
for side in $sides; do
    r=${result[$side]}
    gib=$(awk -v b="$(field "$r" bytes)" 'BEGIN { printf "%.2f", b / 1073741824 }')
    printf '%-10s %9s %7s %7s %7s %6.2f %6.2f %6.2f %8s %7s %6.2f %9s %7s %8s\n' "$side" \
        "$(field "$r" booted)/$clients" "$(field "$r" wall_s)" "$(field "$r" p50_s)" \
        "$(field "$r" p99_s)" "$(field "$r" dhcp_mean_s)" "$(field "$r" tftp_mean_s)" \
        "$(field "$r" http_mean_s)" "$(field "$r" server_cpu_s)" "$gib" \
        "$(awk -v g="$gib" -v w="$(field "$r" wall_s)" 'BEGIN { print (w > 0 ? g / w : 0) }')" \
        "$(awk -v c="$(field "$r" server_cpu_s)" -v g="$gib" 'BEGIN { printf "%.3f", (g > 0 ? c / g : 0) }')" \
        "${result[$side,leases]}" "$(field "$r" client_cpu_s)"
done
echo "(DHCP_s, TFTP_s, HTTP_s: each phase's mean over the booted clients; GiB/s: bytes served / wall)"
for side in $sides; do
    r=${result[$side]}
    echo "$side: DHCP resent $(field "$r" dhcp_resent), NAKs $(field "$r" dhcp_naks); TFTP resent $(field "$r" tftp_resent); HTTP 503 $(field "$r" http_503); server CPU-s: ${result[$side,procs]}"
done
if [ -n "${result[dragonfly]:-}" ] && [ -n "${result[peer]:-}" ]; then
    d=${result[dragonfly]} p=${result[peer]}
    awk -v dw="$(field "$d" wall_s)" -v pw="$(field "$p" wall_s)" \
        -v dc="$(field "$d" server_cpu_s)" -v pc="$(field "$p" server_cpu_s)" \
        -v db="$(field "$d" bytes)" -v pb="$(field "$p" bytes)" 'BEGIN {
        printf "dragonfly/peer: wall %.2fx (target <= 1.2), bytes served per second of wall %.2fx, server CPU %.2fx, CPU per GiB %.2fx (target <= 1.5)\n",
            (pw > 0 ? dw / pw : 0), (pw > 0 && pb > 0 && dw > 0 ? (db / dw) / (pb / pw) : 0),
            (pc > 0 ? dc / pc : 0), (pc > 0 && db > 0 ? (dc / db) / (pc / pb) : 0) }'
    # HTTP alone: ipxed against nginx, CPU per GiB of HTTP bodies.
    awk -v dc="${result[dragonfly,http_cpu]}" -v pc="${result[peer,http_cpu]}" \
        -v db="$(field "$d" http_bytes)" -v pb="$(field "$p" http_bytes)" 'BEGIN {
        g = 1073741824
        printf "HTTP only: ipxed %.3f CPU-s/GiB, nginx %.3f: %.2fx\n", (db > 0 ? dc / (db / g) : 0),
            (pb > 0 ? pc / (pb / g) : 0), (pc > 0 && db > 0 ? (dc / db) / (pc / pb) : 0) }'
fi
if [ -n "${result[dragonfly]:-}" ]; then
    booted=$(field "${result[dragonfly]}" booted)
    if [ "$booted" != "$clients" ]; then
        echo "NOT EVERY DRAGONFLY CLIENT BOOTED: $booted of $clients (reasons above, 'failed:' lines)"
        exit 1
    fi
    echo "every Dragonfly client booted"
fi
