#!/bin/bash
# image2disk benchmark: the agent's image2disk action (release build of `dragonfly-actions`,
# the same code mage runs) against `curl | zstd -d | dd bs=4M oflag=direct` (what a container
# action does) and `bmaptool copy` (Debian's bmap-tools), writing the same zstd image, served
# over HTTP on loopback, to the same loop device. Two images: "dense" (1 GiB of real files,
# tar'ed from /usr) and "sparse" (2 GiB holding ~300 MiB of the same data in ten runs). Prints
# seconds (best of $RUNS), ratios to ours and the agent's peak RSS (VmHWM); every copy is checked
# against the raw image with sha256 before its time counts. Needs root (losetup); installs
# what it needs (packaging/deps.sh bench).
#
#   integration/bench/image2disk.sh
#   RUNS=3 SHA=0 integration/bench/image2disk.sh   # best of 3; ours without a checksum
#
# Ours verifies a sha256 while it writes unless SHA=0 (the peers verify nothing). The loop
# device's backing file is refilled with 0xA5 before every run, so a tool that leaves zero
# regions unwritten shows: bmaptool does that by design (it trusts the bmap and the target),
# and its copy is compared on the mapped ranges only (marked "mapped only").
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root (losetup)" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
# shellcheck source=packaging/deps.sh
. packaging/deps.sh
deps_install build bench
deps_cargo
cargo build --release --locked -p dragonfly-agent --bin dragonfly-actions >&2
agent=$repo/target/release/dragonfly-actions
runs=${RUNS:-2}
sha=${SHA:-1}

tmp=$(mktemp -d /var/tmp/dragonfly-image2disk-bench.XXXXXX)
loopdev=
server_pid=
cleanup() {
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
    [ -z "$loopdev" ] || losetup -d "$loopdev" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "building the images in $tmp …" >&2
# Real files: what an OS image holds. 1 GiB of it is the dense image.
# (tar dies of SIGPIPE when head has had enough: not a failure.)
{ tar -cf - /usr/lib /usr/share /usr/bin 2>/dev/null || true; } | head -c $((1 << 30)) > "$tmp/dense.raw"
# The sparse image: a 2 GiB hole with ten 30 MiB runs of the same data, 200 MiB apart.
truncate -s 2G "$tmp/sparse.raw"
for i in $(seq 0 9); do
    dd if="$tmp/dense.raw" of="$tmp/sparse.raw" bs=1M count=30 skip=$((i * 30)) \
        seek=$((i * 200 + 3)) conv=notrunc,sparse status=none
done
for img in dense sparse; do
    zstd -q -3 -T0 -f "$tmp/$img.raw" -o "$tmp/$img.raw.zst"
    bmaptool -q create "$tmp/$img.raw" -o "$tmp/$img.bmap"
    sha256sum "$tmp/$img.raw" | cut -d' ' -f1 > "$tmp/$img.sha256"
done

# One HTTP server for everyone: Python's, on loopback.
port=$((20000 + RANDOM % 20000))
(cd "$tmp" && exec python3 -m http.server --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
server_pid=$!
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$port/dense.sha256" 2>/dev/null && break; sleep 0.1; done
base=http://127.0.0.1:$port

truncate -s 2200M "$tmp/disk"
# Direct I/O to the backing file: without it the loop device writes into the host's page cache
# at memory speed, which is no disk (and flatters whoever copies bytes fastest, not whoever
# writes fewest).
loopdev=$(losetup -f --show --direct-io=on "$tmp/disk")

dirty() {
    # 0xA5 everywhere, through the loop device, then out of the page cache.
    tr '\0' '\245' < /dev/zero | dd of="$loopdev" bs=4M count=550 iflag=fullblock oflag=direct status=none
    sync; echo 3 > /proc/sys/vm/drop_caches
}

now() { date +%s.%N; }

# run TOOL IMAGE: prints the seconds, or FAIL.
run() {
    local tool=$1 img=$2 t0 t1 size
    size=$(stat -c %s "$tmp/$img.raw")
    dirty
    # Let the server's file be cached for everyone alike.
    cat "$tmp/$img.raw.zst" > /dev/null
    t0=$(now)
    case $tool in
    ours)
        local sum=
        [ "$sha" = 0 ] || sum=", \"sha256\": \"$(cat "$tmp/$img.sha256")\""
        printf '{"actions": [{"name": "image", "type": "image2disk", "url": "%s", "disk": "%s"%s}]}\n' \
            "$base/$img.raw.zst" "$loopdev" "$sum" > "$tmp/t.json"
        "$agent" "$tmp/t.json" > "$tmp/ours.out" 2> "$tmp/ours.err" || { echo FAIL; cat "$tmp/ours.err" >&2; return; }
        ;;
    dd)
        curl -fsS "$base/$img.raw.zst" | zstd -dc | dd of="$loopdev" bs=4M iflag=fullblock oflag=direct status=none
        ;;
    bmaptool)
        bmaptool -q copy --bmap "$tmp/$img.bmap" "$base/$img.raw.zst" "$loopdev"
        ;;
    esac
    t1=$(now)
    if [ "$tool" = bmaptool ] && [ "$img" = sparse ]; then
        # Compare the mapped ranges only: bmaptool leaves the rest as it found it.
        local ok=1
        for i in $(seq 0 9); do
            cmp -s -n $((30 << 20)) -i $(((i * 200 + 3) << 20)) "$tmp/$img.raw" "$loopdev" || ok=0
        done
        [ "$ok" = 1 ] || { echo FAIL; return; }
    else
        [ "$(head -c "$size" "$loopdev" | sha256sum | cut -d' ' -f1)" = "$(cat "$tmp/$img.sha256")" ] \
            || { echo FAIL; return; }
    fi
    echo "$t1 - $t0" | bc -l
}

best() { sort -g | head -1; }

declare -A T
rss=
for img in dense sparse; do
    for tool in ours dd bmaptool; do
        times=()
        for _ in $(seq "$runs"); do
            t=$(run "$tool" "$img")
            times+=("$t")
            if [ "$tool" = ours ] && [ "$t" != FAIL ]; then
                r=$(sed -n 's/^peak RSS //p' "$tmp/ours.out")
                rss="$rss $img:$r"
            fi
        done
        if printf '%s\n' "${times[@]}" | grep -q FAIL; then T[$tool.$img]=FAIL
        else T[$tool.$img]=$(printf '%s\n' "${times[@]}" | best); fi
    done
done

ratio() { # peer/ours: how many times faster ours is
    if [ "${T[$1]}" = FAIL ] || [ "${T[$2]}" = FAIL ]; then echo -; else printf '%.2f' "$(echo "${T[$2]} / ${T[$1]}" | bc -l)"; fi
}
secs() { if [ "${T[$1]}" = FAIL ]; then echo FAIL; else printf '%.2f' "${T[$1]}"; fi; }

dsize=$(( $(stat -c %s "$tmp/dense.raw.zst") >> 20 ))
ssize=$(( $(stat -c %s "$tmp/sparse.raw.zst") >> 20 ))
echo
echo "image2disk: zstd image over HTTP (loopback) to a loop device; seconds, best of $runs"
printf '%-28s %10s %10s %12s %12s\n' image ours dd bmaptool "ours vs dd/bmap"
printf '%-28s %10s %10s %12s %12s\n' "dense 1 GiB ($dsize MiB .zst)" "$(secs ours.dense)" \
    "$(secs dd.dense)" "$(secs bmaptool.dense)" "$(ratio ours.dense dd.dense)x / $(ratio ours.dense bmaptool.dense)x"
printf '%-28s %10s %10s %12s %12s\n' "sparse 2 GiB ($ssize MiB .zst)" "$(secs ours.sparse)" \
    "$(secs dd.sparse)" "$(secs bmaptool.sparse)" "$(ratio ours.sparse dd.sparse)x / $(ratio ours.sparse bmaptool.sparse)x"
echo "ours: sha256 verified while writing: $([ "$sha" = 0 ] && echo no || echo yes); bmaptool on sparse: mapped only"
echo "agent peak RSS:$rss"
