#!/bin/bash
# Builds the test OS: a small GPT disk image that boots under BIOS (SeaBIOS) and UEFI (OVMF)
# into a Debian kernel and a busybox initramfs whose /init (test-os/init) mounts the ext4 root
# by its label, reads /etc/hostname from it and prints
#
#     DRAGONFLY-TESTOS-BOOTED hostname=<name> firmware=<bios|uefi> root=<dev> uptime=<s>
#
# It is what the provisioning end-to-end tests install (image2disk), configure (writefile
# writes /etc/hostname) and boot (kexec from /boot, then from the disk). No root needed:
#
#     integration/test-os/build.sh      # prints the output directory (and only that) on stdout
#
# Everything comes from Debian packages (apt-get download + dpkg -x, never installed): the
# kernel, busybox-static, GRUB's images and tools (grub-common, grub-pc-bin,
# grub-efi-amd64-bin), sfdisk (fdisk) and mtools. The unpacked tools run against the host's
# libraries (Debian 12). From the host: apt-get, dpkg, mke2fs (e2fsprogs), python3, zstd.
#
# Output: $OUT/<key>/ (OUT defaults to target/test-os) holding test-os.img (raw, 64 MiB),
# test-os.img.zst, SHA256SUMS and manifest.json (layout, package versions, sizes, digests).
# <key> is a hash of this script, init, agent-image/cpio.py and the resolved package versions:
# a second run with the same inputs finds the directory and does nothing. Downloads are cached
# in $OUT/cache. Reproducible: fixed GUIDs, UUIDs and serials, every timestamp is
# SOURCE_DATE_EPOCH (default: the kernel package's vmlinuz mtime); two builds give the same
# sha256.
#
# Layout (documented for the template that installs it; the manifest repeats it):
#   p1  1 MiB   BIOS boot (EF02)  GRUB i386-pc core.img, loaded by GRUB's boot.img in the MBR
#   p2 15 MiB   EFI system, FAT, label DF-ESP: /EFI/BOOT/BOOTX64.EFI (GRUB x86_64-efi)
#   p3 46 MiB   Linux root x86-64, ext4, label dragonfly-root: /boot/vmlinuz, /boot/initrd.img,
#               /boot/grub/grub.cfg, /etc/hostname
# Both GRUBs carry their modules and an early config that finds the root by its label and
# reads /boot/grub/grub.cfg, which boots /boot/vmlinuz with $CMDLINE below.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$REPO/target/test-os}
CACHE=$OUT/cache
mkdir -p "$CACHE"

say() { echo "test-os: $*" >&2; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

ROOT_LABEL=dragonfly-root
ESP_LABEL=DF-ESP
HOSTNAME_DEFAULT=dragonfly-testos
# console=ttyS0 last: /dev/console, where init prints the marker, is the serial line.
CMDLINE="root=LABEL=$ROOT_LABEL console=tty0 console=ttyS0,115200 panic=-1"
# Sizes in 512-byte sectors.
DISK_MIB=64
P1_START=2048 P1_SIZE=2048 # BIOS boot, 1 MiB
P2_START=4096 P2_SIZE=30720 # ESP, 15 MiB
P3_START=34816              # root: the rest but the last MiB (the backup GPT is in there)
P3_SIZE=$((DISK_MIB * 2048 - P3_START - 2048))
# Fixed identifiers: the image is the same bytes on every build (and every installed test OS
# has the same ones, which is fine for a test fixture).
DISK_GUID=6b0e6b5e-3c1d-4e4e-9d2a-64726166a000
P1_GUID=6b0e6b5e-3c1d-4e4e-9d2a-64726166a001
P2_GUID=6b0e6b5e-3c1d-4e4e-9d2a-64726166a002
P3_GUID=6b0e6b5e-3c1d-4e4e-9d2a-64726166a003
ROOT_UUID=6b0e6b5e-3c1d-4e4e-9d2a-64726166a0f3
ESP_SERIAL=DF7E5700

# --- Debian packages: resolve versions (the cache key), then download ----------------------
KPKG=${KPKG:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')}
[ -n "$KPKG" ] || { say "no linux-image-*-amd64 package known to apt (apt-get update?)"; exit 1; }
KVER=${KPKG#linux-image-}
# One apt-cache call for every candidate version (each call costs ~0.5 s).
declare -A CAND
while read -r pkg ver; do CAND[$pkg]=$ver; done < <(
    apt-cache policy "$KPKG" busybox-static grub-common fdisk mtools |
        awk '/^[^ ].*:$/ { sub(":$", ""); p = $0 } /Candidate:/ { print p, $2 }')
# package=version, one a line; pin with KPKG_VERSION, BUSYBOX_VERSION, GRUB_VERSION (all three
# GRUB packages), FDISK_VERSION, MTOOLS_VERSION.
GRUB_VERSION=${GRUB_VERSION:-${CAND[grub-common]:-}}
PKGS=("$KPKG=${KPKG_VERSION:-${CAND[$KPKG]:-}}"
      "busybox-static=${BUSYBOX_VERSION:-${CAND[busybox-static]:-}}"
      "grub-common=$GRUB_VERSION" "grub-pc-bin=$GRUB_VERSION" "grub-efi-amd64-bin=$GRUB_VERSION"
      "fdisk=${FDISK_VERSION:-${CAND[fdisk]:-}}" "mtools=${MTOOLS_VERSION:-${CAND[mtools]:-}}")
for p in "${PKGS[@]}"; do
    if [ -z "${p#*=}" ] || [ "${p#*=}" = "(none)" ]; then
        say "apt knows no version of ${p%=} (apt-get update?)"; exit 1
    fi
done

KEY=$( { cat "$HERE/build.sh" "$HERE/init" "$REPO/agent-image/cpio.py"
         printf '%s\n' "${PKGS[@]}" "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-}"; } |
       sha256sum | cut -c1-16)
DIR=$OUT/$KEY
if [ -f "$DIR/manifest.json" ]; then
    say "up to date: $DIR"
    echo "$DIR"
    exit 0
fi
# One build at a time per $OUT (they share the download cache); the one that waited may find
# its image built meanwhile.
exec 9>"$OUT/.lock"
flock 9
if [ -f "$DIR/manifest.json" ]; then
    say "built meanwhile: $DIR"
    echo "$DIR"
    exit 0
fi
say "building $DIR"
T0=$(date +%s.%N)

fetch() { # package=version → path of the cached .deb (apt writes an epoch's ':' as %3a)
    local pkg=${1%%=*} ver=${1#*=} deb
    deb=$CACHE/${pkg}_${ver/:/%3a}_amd64.deb
    if [ ! -f "$deb" ]; then
        say "downloading $pkg $ver"
        # grep fails when apt printed nothing else: the check below is what counts.
        (cd "$CACHE" && { apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true; })
        [ -f "$deb" ] || { say "apt-get download $pkg=$ver gave no $deb"; return 1; }
    fi
    echo "$deb"
}
unpack() { # deb → its dpkg -x tree, made atomically (a half-unpacked tree is never reused)
    local x
    x=$CACHE/x-$(basename "$1" .deb)
    if [ ! -d "$x" ]; then
        rm -rf "$x.tmp"
        dpkg -x "$1" "$x.tmp"
        mv "$x.tmp" "$x"
    fi
    echo "$x"
}
X=()
for p in "${PKGS[@]}"; do
    X+=("$(unpack "$(fetch "$p")")")
done
KX=${X[0]} BX=${X[1]} GCX=${X[2]} GPCX=${X[3]} GEFX=${X[4]} FDX=${X[5]} MTX=${X[6]}
BUSYBOX=$BX/bin/busybox
KMOD=$KX/lib/modules/$KVER
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$KX/boot/vmlinuz-$KVER")}
export TZ=UTC

W=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$W"' EXIT

# --- initramfs: busybox, init, disk and ext4 modules -------------------------------------
# Disks: virtio (blk, scsi), AHCI, NVMe, SCSI disks. ext4 finds its crc32c through the crypto
# API, not modules.dep: crc32c_generic is named explicitly.
WANT=(virtio_pci virtio_blk virtio_scsi ahci sd_mod nvme crc32c_generic ext4)
R=$W/initramfs
mkdir -p "$R"/{bin,dev,etc,proc,sys,root,lib/modules/"$KVER"}
# The package carries no modules.dep (its postinst makes it): made once in the unpacked tree.
[ -f "$KMOD/modules.dep" ] || "$BUSYBOX" depmod -b "$KX" "$KVER"
python3 - "$KMOD" "$R/lib/modules/$KVER" "${WANT[@]}" <<'PY'
# Copies the closure of the wanted modules over modules.dep.
import os, shutil, sys
src, dst, want = sys.argv[1], sys.argv[2], sys.argv[3:]
dep = {}
for line in open(os.path.join(src, "modules.dep")):
    path, _, deps = line.partition(":")
    dep[path.strip()] = deps.split()
by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in dep}
seen = set()
def visit(p):
    if p in seen: return
    seen.add(p)
    for d in dep[p]: visit(d)
for name in want:
    if name not in by_name: sys.exit(f"module {name} is not in this kernel")
    visit(by_name[name])
for p in sorted(seen):
    os.makedirs(os.path.join(dst, os.path.dirname(p)), exist_ok=True)
    shutil.copy(os.path.join(src, p), os.path.join(dst, p))
for f in ("modules.order", "modules.builtin"):
    shutil.copy(os.path.join(src, f), os.path.join(dst, f))
PY
"$BUSYBOX" depmod -b "$R" "$KVER"
printf '%s\n' "${WANT[@]}" >"$R/etc/modules"
cp "$BUSYBOX" "$R/bin/busybox"
install -m 0755 "$HERE/init" "$R/init"
python3 "$REPO/agent-image/cpio.py" "$R" "$SOURCE_DATE_EPOCH" | zstd -q -19 -T1 >"$W/initrd.img"

# --- root filesystem (ext4) --------------------------------------------------------------
RT=$W/root
mkdir -p "$RT"/{boot/grub,etc}
cp "$KX/boot/vmlinuz-$KVER" "$RT/boot/vmlinuz"
cp "$W/initrd.img" "$RT/boot/initrd.img"
cat >"$RT/boot/grub/grub.cfg" <<EOF
# Dragonfly test OS (integration/test-os/build.sh): boot at once, nothing to choose.
set timeout=0
echo "Dragonfly test OS: loading /boot/vmlinuz"
linux /boot/vmlinuz $CMDLINE
initrd /boot/initrd.img
boot
EOF
echo "$HOSTNAME_DEFAULT" >"$RT/etc/hostname"
cat >"$RT/etc/os-release" <<EOF
NAME="Dragonfly test OS"
ID=dragonfly-testos
PRETTY_NAME="Dragonfly test OS (Debian kernel $KVER)"
EOF
chmod -R u=rwX,go=rX "$RT"
find "$RT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# GRUB 2.06 cannot read metadata_csum_seed or orphan_file; E2FSPROGS_FAKE_TIME fixes the
# superblock's times, hash_seed the directory hashes.
truncate -s $((P3_SIZE * 512)) "$W/root.ext4"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -F -t ext4 -L "$ROOT_LABEL" -U "$ROOT_UUID" \
    -O '^metadata_csum_seed,^orphan_file' \
    -E "hash_seed=$ROOT_UUID,root_owner=0:0,nodiscard" -d "$RT" "$W/root.ext4"
# mke2fs -d copies each file's ctime, which no one can set: debugfs sets them afterwards.
(cd "$RT" && find . -mindepth 1 | sort | sed "s|^\.\(.*\)|sif \1 ctime @$SOURCE_DATE_EPOCH|") |
    debugfs -w -f - "$W/root.ext4" >/dev/null 2>&1

# --- GRUB --------------------------------------------------------------------------------
# An early config in each image: find the root by its label, then normal mode reads
# /boot/grub/grub.cfg from it. Every module is inside the image (nothing under /boot/grub/
# <platform>/), so the root holds only grub.cfg. efi_gop: without a video driver GRUB says
# "error: no suitable video mode found" before booting Linux (harmlessly, but a test reading
# the console should not see errors that are none).
cat >"$W/early.cfg" <<EOF
search --no-floppy --label --set=root $ROOT_LABEL
set prefix=(\$root)/boot/grub
EOF
GRUB_MODS=(part_gpt ext2 search search_label normal configfile linux boot echo test)
"$GCX/usr/bin/grub-mkimage" -O i386-pc -d "$GPCX/usr/lib/grub/i386-pc" -c "$W/early.cfg" \
    -p /boot/grub -o "$W/core.img" biosdisk "${GRUB_MODS[@]}"
"$GCX/usr/bin/grub-mkimage" -O x86_64-efi -d "$GEFX/usr/lib/grub/x86_64-efi" -c "$W/early.cfg" \
    -p /boot/grub -o "$W/BOOTX64.EFI" efi_gop "${GRUB_MODS[@]}"

# --- ESP (FAT) ---------------------------------------------------------------------------
truncate -s $((P2_SIZE * 512)) "$W/esp.fat"
export MTOOLS_SKIP_CHECK=1
"$MTX/usr/bin/mformat" -i "$W/esp.fat" -T "$P2_SIZE" -h 64 -s 32 -v "$ESP_LABEL" -N "$ESP_SERIAL" ::
"$MTX/usr/bin/mmd" -i "$W/esp.fat" ::/EFI ::/EFI/BOOT
touch -d "@$SOURCE_DATE_EPOCH" "$W/BOOTX64.EFI"
"$MTX/usr/bin/mcopy" -m -i "$W/esp.fat" "$W/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# --- the disk ----------------------------------------------------------------------------
IMG=$W/test-os.img
truncate -s $((DISK_MIB << 20)) "$IMG"
"$FDX/sbin/sfdisk" -q --no-reread --no-tell-kernel "$IMG" <<EOF
label: gpt
label-id: $DISK_GUID
unit: sectors
first-lba: 2048
start=$P1_START, size=$P1_SIZE, type=21686148-6449-6E6F-744E-656564454649, uuid=$P1_GUID, name="bios-boot"
start=$P2_START, size=$P2_SIZE, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$P2_GUID, name="esp"
start=$P3_START, size=$P3_SIZE, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$P3_GUID, name="root"
EOF
dd if="$W/esp.fat" of="$IMG" bs=512 seek="$P2_START" conv=notrunc,sparse status=none
dd if="$W/root.ext4" of="$IMG" bs=512 seek="$P3_START" conv=notrunc,sparse status=none
# What grub-bios-setup does (it cannot run on a file here: it insists on probing the device
# holding its own directory): GRUB's boot.img into the MBR's code area, keeping the
# protective MBR's partition table, pointed at core.img in the BIOS boot partition, whose
# first sector (diskboot.img) gets the block list of the rest. Offsets from GRUB 2.06's
# include/grub/i386/pc/boot.h and util/setup.c.
python3 - "$IMG" "$GPCX/usr/lib/grub/i386-pc/boot.img" "$W/core.img" "$P1_START" "$P1_SIZE" <<'PY'
import sys
img, boot_path, core_path = sys.argv[1:4]
lba, room = int(sys.argv[4]), int(sys.argv[5])
boot = bytearray(open(boot_path, "rb").read())
core = bytearray(open(core_path, "rb").read())
assert len(boot) == 512
sectors = (len(core) + 511) // 512
if sectors > room:
    sys.exit(f"core.img needs {sectors} sectors, the BIOS boot partition has {room}")
core += bytes(sectors * 512 - len(core))
with open(img, "r+b") as f:
    mbr = f.read(512)
    boot[0x03:0x5a] = mbr[0x03:0x5a]        # the BPB (zeros in a protective MBR)
    boot[0x1b8:0x1fe] = mbr[0x1b8:0x1fe]    # disk signature and partition table
    boot[0x5c:0x64] = lba.to_bytes(8, "little")  # GRUB_BOOT_MACHINE_KERNEL_SECTOR
    boot[0x64] = 0xFF                       # BOOT_DRIVE: the drive the BIOS booted from
    boot[0x66:0x68] = b"\x90\x90"           # DRIVE_CHECK: a hard disk, not a floppy
    # diskboot.img's first (and only) block list entry: start, length, segment 0x820.
    bl = 512 - 12
    core[bl:bl + 8] = (lba + 1).to_bytes(8, "little")
    core[bl + 8:bl + 10] = (sectors - 1).to_bytes(2, "little")
    core[bl + 10:bl + 12] = (0x820).to_bytes(2, "little")
    f.seek(0); f.write(boot)
    f.seek(lba * 512); f.write(core)
PY

# --- outputs -----------------------------------------------------------------------------
T1=$(date +%s.%N)
zstd -q -19 -T0 "$IMG" -o "$IMG.zst"
T2=$(date +%s.%N)
touch -d "@$SOURCE_DATE_EPOCH" "$IMG" "$IMG.zst"
(cd "$W" && sha256sum test-os.img test-os.img.zst >SHA256SUMS)
python3 - "$W" "$KVER" "$CMDLINE" "$SOURCE_DATE_EPOCH" "$HOSTNAME_DEFAULT" "$ROOT_LABEL" \
    "$ESP_LABEL" "$ROOT_UUID" "$DISK_GUID" "$P1_GUID:$P1_START:$P1_SIZE" \
    "$P2_GUID:$P2_START:$P2_SIZE" "$P3_GUID:$P3_START:$P3_SIZE" "${PKGS[@]}" <<'PY'
import hashlib, json, os, sys
(w, kver, cmdline, sde, host, root_label, esp_label, root_uuid, disk_guid,
 p1, p2, p3), pkgs = sys.argv[1:13], sys.argv[13:]
def art(name):
    p = os.path.join(w, name)
    return {"file": name, "size": os.path.getsize(p),
            "sha256": hashlib.sha256(open(p, "rb").read()).hexdigest()}
def part(n, spec, name, type_, **fs):
    guid, start, size = spec.split(":")
    return {"number": n, "name": name, "type": type_, "partuuid": guid,
            "startBytes": int(start) * 512, "sizeBytes": int(size) * 512, **fs}
m = {
    "kernelVersion": kver, "cmdline": cmdline, "sourceDateEpoch": int(sde),
    "packages": [dict(zip(("name", "version"), p.split("=", 1))) for p in pkgs],
    "diskGuid": disk_guid, "defaultHostname": host,
    "marker": "DRAGONFLY-TESTOS-BOOTED hostname=<name> firmware=<bios|uefi> root=<dev> uptime=<s>",
    "partitions": [
        part(1, p1, "bios-boot", "21686148-6449-6e6f-744e-656564454649",
             contents="GRUB i386-pc core.img"),
        part(2, p2, "esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", filesystem="vfat",
             label=esp_label, contents="/EFI/BOOT/BOOTX64.EFI (GRUB x86_64-efi)"),
        part(3, p3, "root", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", filesystem="ext4",
             label=root_label, uuid=root_uuid,
             contents="/boot/vmlinuz /boot/initrd.img /boot/grub/grub.cfg /etc/hostname"),
    ],
    "image": art("test-os.img"), "compressed": art("test-os.img.zst"),
    "kernel": {"path": "/boot/vmlinuz", "size": os.path.getsize(os.path.join(w, "root/boot/vmlinuz"))},
    "initrd": art("initrd.img") | {"path": "/boot/initrd.img"},
}
m["initrd"].pop("file")
json.dump(m, open(os.path.join(w, "manifest.json"), "w"), indent=2, sort_keys=True)
PY
rm -rf "$W/initramfs" "$W/root" "$W/root.ext4" "$W/esp.fat" "$W/core.img" "$W/BOOTX64.EFI" \
    "$W/early.cfg" "$W/initrd.img"
# The directory appears whole or not at all (manifest.json is what marks it done); nothing
# else ever makes it, so it cannot be there yet (the lock).
chmod 0755 "$W"
mv -T "$W" "$DIR"
trap - EXIT
T3=$(date +%s.%N)
say "$(stat -c %s "$DIR/test-os.img.zst" | awk '{printf "%.1f MiB", $1 / 1048576}') compressed," \
    "$(du -k "$DIR/test-os.img" | awk '{printf "%.1f MiB", $1 / 1024}') of $DISK_MIB MiB raw used;" \
    "built in $(secs "$T0" "$T3") s (zstd $(secs "$T1" "$T2") s)"
echo "$DIR"
