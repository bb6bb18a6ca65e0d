#!/bin/bash
# Builds the agent's netboot image: a Debian kernel and an initramfs holding busybox, mage, the
# mkfs tools of its disk actions and the kernel modules for common NICs, disks and filesystems.  One command, no root needed:
#
#     agent-image/build.sh            # → target/agent-image/{vmlinuz,initrd.img,manifest.json}
#
# Reproducible: the Debian packages are the versions apt resolves (recorded in the manifest;
# pin them with KPKG=/BUSYBOX_VERSION=), every file in the archive gets SOURCE_DATE_EPOCH
# (default: the kernel package's own vmlinuz mtime), uid/gid 0 and sequential inode numbers,
# in sorted order, compressed without timestamps.  Downloads are cached in
# target/agent-image/cache; nothing is installed on the host.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$REPO/target/agent-image}
CACHE=$OUT/cache
mkdir -p "$CACHE"

say() { echo "agent-image: $*" >&2; }

# --- Debian packages ---------------------------------------------------------------------
KPKG=${KPKG:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')}
KVER=${KPKG#linux-image-}
fetch() { # package [version] → path of the cached .deb (apt writes an epoch's ':' as %3a)
    local pkg=$1 ver=${2:-} deb
    ver=${ver:-$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')}
    deb=$CACHE/${pkg}_${ver/:/%3a}_amd64.deb
    # Architecture-independent packages (ca-certificates) are _all.
    [ -f "$deb" ] || [ ! -f "${deb%_amd64.deb}_all.deb" ] || deb=${deb%_amd64.deb}_all.deb
    if [ ! -f "$deb" ]; then
        say "downloading $pkg $ver"
        # grep fails when apt printed nothing else: the check below is what counts.
        (cd "$CACHE" && { apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true; })
        [ -f "$deb" ] || [ ! -f "${deb%_amd64.deb}_all.deb" ] || deb=${deb%_amd64.deb}_all.deb
        [ -f "$deb" ] || { say "apt-get download $pkg=$ver gave no $deb"; return 1; }
    fi
    echo "$deb"
}
KDEB=$(fetch "$KPKG" "${KPKG_VERSION:-}")
BDEB=$(fetch busybox-static "${BUSYBOX_VERSION:-}")
# The CAs https:// downloads trust (image2disk, writefile): Debian's Mozilla set.
CADEB=$(fetch ca-certificates)
# The disk actions' tools (partition's `format`): mke2fs, mkfs.fat and mkfs.xfs with the shared
# libraries they link and the glibc they were built for, unpacked the same way. mkswap is
# busybox's (util-linux's would bring libselinux and pcre2 for one tiny tool).
TOOL_PKGS=(e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 dosfstools xfsprogs libinih1
           liburcu8 libc6)
TOOL_DEBS=()
for pkg in "${TOOL_PKGS[@]}"; do TOOL_DEBS+=("$(fetch "$pkg")"); done
KX=$CACHE/x-$(basename "$KDEB" .deb)
BX=$CACHE/x-$(basename "$BDEB" .deb)
unpack() { # deb dir: dpkg -x, atomically (a half-unpacked tree is never reused)
    [ -d "$2" ] && return 0
    rm -rf "$2.tmp"
    dpkg -x "$1" "$2.tmp"
    mv "$2.tmp" "$2"
}
unpack "$KDEB" "$KX"
unpack "$BDEB" "$BX"
CAX=$CACHE/x-$(basename "$CADEB" .deb)
unpack "$CADEB" "$CAX"
TOOLS_X=()
for deb in "${TOOL_DEBS[@]}"; do
    TOOLS_X+=("$CACHE/x-$(basename "$deb" .deb)")
    unpack "$deb" "${TOOLS_X[-1]}"
done
BUSYBOX=$BX/bin/busybox
KMOD=$KX/lib/modules/$KVER
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$KX/boot/vmlinuz-$KVER")}

# --- the agent ---------------------------------------------------------------------------
# Static glibc (no musl target here): mage resolves no names (apid's URL is an IP address),
# so glibc's static-NSS limitation does not bite.  Its own target dir keeps these RUSTFLAGS
# from invalidating the workspace's build cache.
if [ -z "${MAGE:-}" ]; then
    say "building mage (release, static)"
    RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$REPO=." \
    CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
    CARGO_PROFILE_RELEASE_PANIC=abort \
        cargo build --release --locked --quiet -p dragonfly-agent --bin mage \
        --target x86_64-unknown-linux-gnu --target-dir "$OUT/cargo" \
        --manifest-path "$REPO/Cargo.toml"
    MAGE=$OUT/cargo/x86_64-unknown-linux-gnu/release/mage
fi
if ! file_out=$(head -c 4 "$MAGE") || [ "$file_out" != $'\x7fELF' ]; then
    say "$MAGE is not an ELF binary"; exit 1
fi

# --- kernel modules ----------------------------------------------------------------------
# NICs: virtio, Intel (e1000 … ice), Mellanox, Broadcom, Realtek.  Disks: virtio, AHCI/PATA,
# NVMe, SCSI disks, common RAID HBAs.  Filesystems the disk actions make and mount (ext4, vfat
# with its code pages, xfs) and the crc32c they checksum with, which the kernel asks for by
# name at mount time rather than through modules.dep.  Dependencies come from modules.dep.
WANT=(virtio_pci virtio_net virtio_blk virtio_scsi
      e1000 e1000e igb igc ixgbe i40e ice mlx4_en mlx5_core bnxt_en tg3 r8169
      ahci ata_piix nvme sd_mod megaraid_sas mpt3sas hpsa
      crc32c_generic crc32c_intel ext4 vfat nls_cp437 nls_ascii nls_utf8 xfs)
STAGE_MODS=$CACHE/depmod-$KVER
if [ ! -f "$STAGE_MODS/lib/modules/$KVER/modules.dep" ]; then
    rm -rf "$STAGE_MODS"; mkdir -p "$STAGE_MODS/lib/modules"
    cp -a "$KMOD" "$STAGE_MODS/lib/modules/"
    "$BUSYBOX" depmod -b "$STAGE_MODS" "$KVER"
fi
DEP=$STAGE_MODS/lib/modules/$KVER/modules.dep

R=$OUT/initramfs.root
rm -rf "$R"; mkdir -p "$R"/{bin,dev,etc,proc,sys,tmp,run,lib/modules/"$KVER"}
# The closure of $WANT over modules.dep, in load order (dependencies first).
MODS=$(python3 - "$DEP" "${WANT[@]}" <<'PY'
import sys, os
dep = {}
for line in open(sys.argv[1]):
    path, _, deps = line.partition(":")
    dep[path.strip()] = deps.split()
by_name = {os.path.basename(p)[:-3].replace("-", "_"): p for p in dep}
order, seen = [], set()
def visit(p):
    if p in seen: return
    seen.add(p)
    for d in dep[p]: visit(d)
    order.append(p)
for name in sys.argv[2:]:
    if name not in by_name: sys.exit(f"module {name} is not in this kernel")
    visit(by_name[name])
print("\n".join(order))
PY
)
for m in $MODS; do
    mkdir -p "$R/lib/modules/$KVER/$(dirname "$m")"
    cp "$KMOD/$m" "$R/lib/modules/$KVER/$m"
done
cp "$KMOD"/modules.{order,builtin} "$R/lib/modules/$KVER/"
"$BUSYBOX" depmod -b "$R" "$KVER"
printf '%s\n' "${WANT[@]}" > "$R/etc/modules"

# --- userland ----------------------------------------------------------------------------
cp "$BUSYBOX" "$R/bin/busybox"
cp "$MAGE" "$R/bin/mage"
install -m 0755 "$HERE/rootfs/init" "$R/init"
install -m 0755 "$HERE/rootfs/udhcpc.script" "$R/etc/udhcpc.script"
# The mkfs tools in /sbin (first in /init's PATH, ahead of busybox's applets), their libraries
# where Debian's dynamic loader looks for them.
mkdir -p "$R/sbin" "$R/lib/x86_64-linux-gnu" "$R/lib64"
for x in "${TOOLS_X[@]}"; do
    for t in mke2fs mkfs.fat mkfs.xfs; do
        [ -f "$x/sbin/$t" ] && cp "$x/sbin/$t" "$R/sbin/$t"
    done
    for d in "$x/lib/x86_64-linux-gnu" "$x/usr/lib/x86_64-linux-gnu"; do
        [ -d "$d" ] || continue
        for l in libext2fs.so.2 libe2p.so.2 libcom_err.so.2 libblkid.so.1 libuuid.so.1 \
                 libinih.so.1 liburcu.so.8 libc.so.6 libm.so.6 ld-linux-x86-64.so.2; do
            [ -e "$d/$l" ] && cp -L "$d/$l" "$R/lib/x86_64-linux-gnu/$l"
        done
    done
done
# The CA bundle the agent's https:// downloads trust, made as update-ca-certificates makes it
# (the package ships the certificates; its postinst, which never runs here, joins them), in
# a fixed order so the image stays reproducible; and the directory for a site's own CAs.
mkdir -p "$R/etc/ssl/certs" "$R/etc/dragonfly/ca.d"
find "$CAX/usr/share/ca-certificates" -name '*.crt' -print0 | LC_ALL=C sort -z \
    | xargs -0 cat > "$R/etc/ssl/certs/ca-certificates.crt"
[ -s "$R/etc/ssl/certs/ca-certificates.crt" ] || { say "no CA certificates in $CADEB"; exit 1; }
# mke2fs checks /etc/mtab before formatting (is the device mounted?).
ln -sf /proc/mounts "$R/etc/mtab"
ln -sf mke2fs "$R/sbin/mkfs.ext4"
ln -sf mkfs.fat "$R/sbin/mkfs.vfat"
ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
for t in mke2fs mkfs.fat mkfs.xfs; do
    [ -f "$R/sbin/$t" ] || { say "$t is missing from the tool packages"; exit 1; }
done
# Every library a tool needs must be in the image: a missing one is a failed format on a
# machine, far from here.
python3 - "$R" <<'PY'
import os, struct, sys
root = sys.argv[1]
def needed(path):
    # DT_NEEDED entries from the ELF dynamic section (64-bit little-endian only).
    b = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", b, 0x28); shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3a)
    secs = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    dyn = [s for s in secs if s[1] == 6]
    if not dyn: return []
    d = dyn[0]; strtab = secs[d[6]]
    out = []
    for off in range(d[4], d[4] + d[5], 16):
        tag, val = struct.unpack_from("<qQ", b, off)
        if tag == 0: break
        if tag == 1:
            s = strtab[4] + val; out.append(b[s:b.index(b"\0", s)].decode())
    return out
libdir = os.path.join(root, "lib/x86_64-linux-gnu")
missing = set()
todo = [os.path.join(root, "sbin", t) for t in ("mke2fs", "mkfs.fat", "mkfs.xfs")]
seen = set()
while todo:
    p = todo.pop()
    if p in seen: continue
    seen.add(p)
    for n in needed(p):
        q = os.path.join(libdir, n)
        if os.path.exists(q): todo.append(q)
        else: missing.add(n)
if missing: sys.exit("agent-image: libraries missing for the mkfs tools: " + ", ".join(sorted(missing)))
PY

# --- archive -----------------------------------------------------------------------------
COMP=gzip
if grep -q '^CONFIG_RD_ZSTD=y' "$KX/boot/config-$KVER" && command -v zstd >/dev/null; then
    COMP=zstd
fi
# Every output is written beside its final name and renamed into place: a reader (ipxed
# serving this directory, a test copying it) never sees a half-written file.
python3 "$HERE/cpio.py" "$R" "$SOURCE_DATE_EPOCH" > "$OUT/initrd.cpio"
if [ $COMP = zstd ]; then
    zstd -q -f -19 -T1 "$OUT/initrd.cpio" -o "$OUT/.initrd.img.new"
else
    gzip -n -9 -c "$OUT/initrd.cpio" > "$OUT/.initrd.img.new"
fi
rm -f "$OUT/initrd.cpio"
cp "$KX/boot/vmlinuz-$KVER" "$OUT/.vmlinuz.new"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/.vmlinuz.new" "$OUT/.initrd.img.new"
mv -f "$OUT/.vmlinuz.new" "$OUT/vmlinuz"
mv -f "$OUT/.initrd.img.new" "$OUT/initrd.img"

# --- manifest ----------------------------------------------------------------------------
python3 - "$OUT" "$KVER" "$(basename "$KDEB")" "$(basename "$BDEB")" "$COMP" "$SOURCE_DATE_EPOCH" \
    "$(grep -m1 '^version' "$HERE/../Cargo.toml" | cut -d'"' -f2)" "${WANT[@]}" <<'PY'
import hashlib, json, os, sys
out, kver, kdeb, bdeb, comp, sde, agent = sys.argv[1:8]
def art(name):
    p = os.path.join(out, name)
    return {"file": name, "size": os.path.getsize(p),
            "sha256": hashlib.sha256(open(p, "rb").read()).hexdigest()}
m = {"kernelVersion": kver, "agentVersion": agent, "kernelPackage": kdeb,
     "busyboxPackage": bdeb, "initrdCompression": comp, "sourceDateEpoch": int(sde),
     "modules": sys.argv[8:], "vmlinuz": art("vmlinuz"), "initrd": art("initrd.img")}
tmp = os.path.join(out, ".manifest.json.new")
json.dump(m, open(tmp, "w"), indent=2, sort_keys=True)
os.replace(tmp, os.path.join(out, "manifest.json"))
print(json.dumps({k: m[k] for k in ("kernelVersion", "agentVersion")}), file=sys.stderr)
PY
SIZE=$(stat -c %s "$OUT/initrd.img")
LIMIT=$((30 * 1024 * 1024))
say "initrd.img $((SIZE / 1024)) KiB ($COMP), vmlinuz $(($(stat -c %s "$OUT/vmlinuz") / 1024)) KiB, $(echo "$MODS" | wc -l) modules"
if [ "$SIZE" -ge "$LIMIT" ]; then
    say "initrd.img is over the 30 MiB target"; exit 1
fi
