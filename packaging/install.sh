#!/bin/bash
# Install Dragonfly's binaries, systemd units, sysusers.d and tmpfiles.d files into a root.
#
#   packaging/install.sh DESTDIR            # DESTDIR=/ installs onto this host
#
# Binaries come from $DRAGONFLY_BIN_DIR (default: target/release of this repository), as left
# by `cargo build --release`; this script builds nothing. It never overwrites
# /etc/dragonfly/dragonfly.toml or an existing key (boot-token-key, bmc-key).
#
# This installs onto a machine (or a container root, or the temporary root units/check.sh
# verifies); it is not a package build: a package must generate the key in its post-install
# step, or every host would share one key.
set -euo pipefail

usage() { echo "usage: $0 DESTDIR   (binaries from \$DRAGONFLY_BIN_DIR, default target/release)" >&2; exit 2; }
[ $# -eq 1 ] || usage
dest=${1%/}
[ -d "${dest:-/}" ] || { echo "$0: DESTDIR ${dest:-/} is not a directory" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=${DRAGONFLY_BIN_DIR:-$repo/target/release}

# One per daemon, plus the migration tool. A daemon added to units/ goes here too
# (units/check.sh fails on a unit whose ExecStart= binary was not installed).
# And the operators' command-line client, with its man page and shell completions, which it
# generates from its own definitions.
binaries=(dragonfly-apid dragonfly-migrate dragonfly-tftpd dragonfly-ipxed dragonfly-dhcpd dragonfly-workflowd dragonfly-bmcd dragonfly)

for b in "${binaries[@]}"; do
    [ -x "$bin_dir/$b" ] || { echo "$0: $bin_dir/$b missing: run \`cargo build --release\` first" >&2; exit 1; }
done

for b in "${binaries[@]}"; do
    install -D -m 0755 "$bin_dir/$b" "$dest/usr/bin/$b"
done

install -d -m 0755 "$dest/usr/share/man/man1" "$dest/usr/share/bash-completion/completions" \
    "$dest/usr/share/zsh/vendor-completions" "$dest/usr/share/fish/vendor_completions.d"
"$bin_dir/dragonfly" man >"$dest/usr/share/man/man1/dragonfly.1"
"$bin_dir/dragonfly" completions bash >"$dest/usr/share/bash-completion/completions/dragonfly"
"$bin_dir/dragonfly" completions zsh >"$dest/usr/share/zsh/vendor-completions/_dragonfly"
"$bin_dir/dragonfly" completions fish >"$dest/usr/share/fish/vendor_completions.d/dragonfly.fish"

install -d -m 0755 "$dest/usr/lib/systemd/system"
for unit in "$repo"/units/*.service "$repo"/units/*.socket "$repo"/units/*.target \
            "$repo"/units/*.timer "$repo"/units/*.path; do
    [ -e "$unit" ] || continue
    install -m 0644 "$unit" "$dest/usr/lib/systemd/system/"
done
install -D -m 0644 "$repo/units/sysusers.d/dragonfly.conf" "$dest/usr/lib/sysusers.d/dragonfly.conf"
install -D -m 0644 "$repo/units/tmpfiles.d/dragonfly.conf" "$dest/usr/lib/tmpfiles.d/dragonfly.conf"

doc=$dest/usr/share/doc/dragonfly
install -D -m 0644 "$repo/packaging/dragonfly.toml.example" "$doc/dragonfly.toml.example"
[ ! -e "$repo/docs/security.md" ] || install -m 0644 "$repo/docs/security.md" "$doc/security.md"

# /etc/dragonfly itself is 0750 root:dragonfly (tmpfiles.d fixes the group once the group
# exists), so the file inside can be world-readable and owned by root.
install -d -m 0750 "$dest/etc/dragonfly"
[ -e "$dest/etc/dragonfly/dragonfly.toml" ] ||
    install -m 0644 "$repo/packaging/dragonfly.toml.example" "$dest/etc/dragonfly/dragonfly.toml"

# Per-host secrets, 32 random bytes each, read only by systemd (LoadCredential=), generated
# once and never overwritten:
# - boot-token-key: the HMAC key of per-boot agent tokens (apid, ipxed); replacing it
#   invalidates every outstanding agent token;
# - bmc-key: bmcd's private key, which opens the BMC passwords apid sealed to its public key;
#   replacing it means setting every BMC password again.
install -d -m 0700 "$dest/etc/dragonfly/credentials"
for name in boot-token-key bmc-key; do
    key=$dest/etc/dragonfly/credentials/$name
    if [ ! -e "$key" ]; then
        (
            umask 077
            head -c 32 /dev/urandom > "$key.tmp"
            [ "$(id -u)" -ne 0 ] || chown 0:0 "$key.tmp"
            mv "$key.tmp" "$key"
        )
    fi
done

if [ "${dest:-/}" = / ]; then
    echo "installed; now: systemd-sysusers && systemd-tmpfiles --create dragonfly.conf &&" \
        "systemctl daemon-reload && systemctl enable --now dragonfly.target"
fi
