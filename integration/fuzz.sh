#!/usr/bin/env bash
# Open-ended fuzzing of the receive paths that face the network: run it before you stop work
# on one (dhcpd's wire format and policy, tftpd's codec), for as long as you can spare.
#
#   integration/fuzz.sh                          # every target, 300 s each
#   integration/fuzz.sh --seconds 1800 receive   # one target, half an hour
#   integration/fuzz.sh --list                   # the targets
#
# Targets are the fuzz_targets/*.rs of every daemons/*/fuzz/ and shared/*/fuzz/ (receive:
# dhcpd; parse_packet, transfer: tftpd; parse_head: dragonfly-http). For each one it
# 1. installs what libFuzzer needs when missing: the nightly toolchain (rustup, minimal
#    profile) and cargo-fuzz (crates.io), through packaging/deps.sh;
# 2. fuzzes for the budget (cargo +nightly fuzz run, debug assertions on), starting from the
#    committed corpus (fuzz/corpus/<target>/) and every crash ever found
#    (fuzz/crashes/<target>/), with new inputs going to a scratch directory;
# 3. merges what added coverage into the committed corpus and minimizes it (cargo fuzz cmin):
#    commit the change to fuzz/corpus/ (it should stay well under 2 MB);
# 4. copies any crash, timeout or out-of-memory input into fuzz/crashes/<target>/, which cmin
#    never touches: commit it with the fix. `cargo test` replays both directories through the
#    function the target calls (tests/integration/fuzz_corpus.rs), so a crash found once is
#    tested on every run from then on.
#
# Exit codes: 0 no target crashed; 1 a target crashed, timed out or ran out of memory (the
# inputs are named at the end); 2 bad usage or something to install by hand.
set -euo pipefail

usage() { # EXIT_CODE
    local fd=2
    [ "$1" -ne 0 ] || fd=1
    sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}" >&"$fd"
    exit "$1"
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

# TARGET DIR pairs: each fuzz target and the daemon directory whose fuzz/ holds it.
declare -A target_dir=()
for file in daemons/*/fuzz/fuzz_targets/*.rs shared/*/fuzz/fuzz_targets/*.rs; do
    [ -e "$file" ] || continue
    name=$(basename "$file" .rs)
    target_dir[$name]=${file%/fuzz/fuzz_targets/*}
done

seconds=300
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --seconds)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "$0: --seconds takes a whole number" >&2; usage 2; }
            seconds=$2
            shift
            ;;
        --list)
            for t in "${!target_dir[@]}"; do echo "$t (${target_dir[$t]})"; done | sort
            exit 0
            ;;
        -h | --help) usage 0 ;;
        -*) echo "$0: unknown option: $1" >&2; usage 2 ;;
        *)
            [ -n "${target_dir[$1]:-}" ] ||
                { echo "$0: no fuzz target $1 (--list names them)" >&2; exit 2; }
            targets+=("$1")
            ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(printf '%s\n' "${!target_dir[@]}" | sort)

# shellcheck source=packaging/deps.sh
. packaging/deps.sh
deps_install build
deps_nightly
deps_cargo_fuzz

scratch=$(mktemp -d "${TMPDIR:-/tmp}/dragonfly-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

size_kib() { echo $(($(du -sb "$1" | cut -f1) / 1024)); }
count() { find "$1" -maxdepth 1 -type f | wc -l; }

failed=()
summary=()
for t in "${targets[@]}"; do
    dir=$repo/${target_dir[$t]}
    corpus=$dir/fuzz/corpus/$t
    crashes=$dir/fuzz/crashes/$t
    found=$scratch/$t-new
    artifacts=$scratch/$t-artifacts
    mkdir -p "$corpus" "$crashes" "$found" "$artifacts"
    before=$(count "$corpus")
    echo
    echo "==> fuzz $t (${target_dir[$t]}): ${seconds} s from $before corpus inputs and $(count "$crashes") kept crashes"
    t0=$SECONDS
    rc=0
    # New inputs go to the first directory; the others are only read. -fork=1 with -ignore_*:
    # one child process at a time that is restarted after a crash, so one run finds every
    # crash its budget can reach instead of stopping at the first (or at a kept one not yet
    # fixed). -timeout: an input that takes 10 s is a hang, kept like a crash.
    (cd "$dir" && cargo +nightly fuzz run "$t" "$found" "$corpus" "$crashes" -- \
        -max_total_time="$seconds" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/") || rc=$?

    crashed=()
    for a in "$artifacts"/*; do
        [ -f "$a" ] || continue
        kept=${crashes#"$repo/"}/$(basename "$a")
        if [ -e "$crashes/$(basename "$a")" ]; then
            crashed+=("$kept (kept before: not fixed yet)")
        else
            cp "$a" "$crashes/"
            crashed+=("$kept (new)")
        fi
    done
    if [ $rc -ne 0 ] && [ ${#crashed[@]} -eq 0 ]; then
        echo "$0: cargo fuzz run $t failed (exit $rc) without a crash input: see above" >&2
        exit 1
    fi

    # What added coverage joins the committed corpus, which is then minimized: merging skips
    # any input that crashes, so crashes stay only in fuzz/crashes/.
    cp -n "$found"/* "$corpus/" 2>/dev/null || true
    echo "==> cargo fuzz cmin $t"
    (cd "$dir" && cargo +nightly fuzz cmin "$t" "$corpus" -- -timeout=10)
    after=$(count "$corpus")
    summary+=("$t: $((SECONDS - t0)) s, corpus $before -> $after inputs ($(size_kib "$corpus") KiB), ${#crashed[@]} crash inputs")
    if [ ${#crashed[@]} -gt 0 ]; then
        failed+=("${crashed[@]}")
    fi
done

echo
printf '==> %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "==> FAILED: inputs that crashed (or hung), all kept in fuzz/crashes/; commit new ones" \
        "with the fix: cargo test replays them" >&2
    printf '    %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "==> no crash; commit the corpus changes: git status -- '*/fuzz/corpus'"
