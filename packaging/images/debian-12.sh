#!/usr/bin/env bash
# Builds Dragonfly's Debian 12 (bookworm) cloud image from Debian packages only: a raw GPT
# disk that boots under legacy BIOS and UEFI, runs cloud-init (NoCloud) on its first boot and
# grows its root to the disk it was written to.
#
#   sudo packaging/images/debian-12.sh [--out DIR] [--force]
#
#   --out DIR   where the outputs go; default $DRAGONFLY_IMAGE_CACHE, else
#               /var/cache/dragonfly/images (outside the repository: the image is ~200 MB)
#   --force     build even when the outputs are up to date
#
# Outputs (the manifest is written last: it is what marks them complete):
#   DIR/debian-12-amd64.raw.zst         the raw disk image (2 GiB), zstd
#   DIR/debian-12-amd64.raw.zst.sha256  its sha256, `sha256sum -c` format
#   DIR/debian-12-amd64.json            {name, format, compression, size and sha256 of the raw
#                                       image, compressedSize, compressedSha256, built,
#                                       recipeSha256, packages, layout, cmdline}
# stdout gets one line, "built FILE" or "cached FILE"; the rest (each phase's time, sizes)
# goes to stderr. When the outputs exist and the manifest's recipeSha256 is this script's
# sha256, nothing is built ("cached", well under a second): change this file, or pass
# --force, to pick up newer packages from the mirror.
#
# Needs root (mmdebstrap's root mode, a loop device, mounts) and http://deb.debian.org;
# installs its host tools through packaging/deps.sh (group os). SOURCE_DATE_EPOCH, when set,
# goes to mmdebstrap, dates the filesystems and is the manifest's "built"; the image is not
# bit-for-bit reproducible (random UUIDs, package scripts' own output).
#
# Layout (the same partition numbers as the test OS, integration/test-os/):
#   p1    1 MiB  BIOS boot (EF02)  GRUB i386-pc core.img (grub-install, from grub-pc)
#   p2  127 MiB  EFI system, FAT32, label DF-ESP: /EFI/BOOT/BOOTX64.EFI, GRUB x86_64-efi
#                (the removable-media path, which firmware boots without an NVRAM entry)
#   p3  rest     Linux root x86-64, ext4, label dragonfly-root; mounted by UUID (fstab, GRUB's
#                root=UUID=), so the image boots from whatever disk it was written to.
#                cloud-init's growpart and resizefs grow it to the end of that disk.
# The kernel command line is "root=UUID=… ro console=tty0 console=ttyS0,115200" (serial last:
# /dev/console, where systemd and cloud-init print, is the serial line); GRUB waits 1 s on
# the screen and on the serial line. /boot/vmlinuz and /boot/initrd.img link to the current
# kernel (link_in_boot), for a kexec from the installed root.
#
# cloud-init: datasource_list [ NoCloud, None ], so it never probes EC2 or OpenStack; a
# provisioning template adds /etc/cloud/cloud.cfg.d/90-dragonfly.cfg (NoCloud seedfrom) to the
# written root. The image carries no seed, no SSH host keys (cloud-init makes them at first
# boot; dragonfly-ssh-host-keys.service runs ssh-keygen -A if it did not), an empty
# /etc/machine-id, a locked root account and no apt lists.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
NAME=debian-12-amd64

usage() { # EXIT_CODE: the header above, on stdout for --help, else on stderr.
    local fd=2
    [ "$1" -ne 0 ] || fd=1
    sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$SELF" >&"$fd"
    exit "$1"
}

OUT=${DRAGONFLY_IMAGE_CACHE:-/var/cache/dragonfly/images}
FORCE=0
while [ $# -gt 0 ]; do
    case $1 in
        --out) [ $# -ge 2 ] || usage 2; OUT=$2; shift ;;
        --out=*) OUT=${1#--out=} ;;
        --force) FORCE=1 ;;
        -h | --help) usage 0 ;;
        *) echo "$0: unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

say() { echo "debian-12: $*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: must run as root (mmdebstrap's root mode, a loop device and mounts):" \
        "sudo $0 $*" >&2
    exit 2
fi

IMG=$OUT/$NAME.raw.zst
SUM=$IMG.sha256
MANIFEST=$OUT/$NAME.json
RECIPE=$(sha256sum "$SELF" | cut -d' ' -f1)

# up_to_date: the three outputs exist, agree with each other, and come from this recipe.
# No hashing of the image here (that is what the .sha256 file is for): this must be quick.
up_to_date() {
    [ -f "$MANIFEST" ] && [ -f "$IMG" ] && [ -f "$SUM" ] || return 1
    python3 - "$MANIFEST" "$IMG" "$SUM" "$RECIPE" <<'PY'
import json, os, sys
manifest, img, sums, recipe = sys.argv[1:5]
try:
    m = json.load(open(manifest))
    ok = (m.get("recipeSha256") == recipe
          and m.get("compressedSize") == os.path.getsize(img)
          and open(sums).read().split()[0] == m.get("compressedSha256"))
except (OSError, ValueError, IndexError, AttributeError):
    ok = False
sys.exit(0 if ok else 1)
PY
}

if [ "$FORCE" -eq 0 ] && up_to_date; then
    say "up to date: $IMG (recipe ${RECIPE:0:12})"
    echo "cached $IMG"
    exit 0
fi

# shellcheck source=packaging/deps.sh
. "$REPO/packaging/deps.sh"
deps_install os >&2

mkdir -p "$OUT"
# One build at a time per output directory; the one that waited may find the image built.
exec 9>"$OUT/.$NAME.lock"
flock 9
if [ "$FORCE" -eq 0 ] && up_to_date; then
    say "built meanwhile: $IMG"
    echo "cached $IMG"
    exit 0
fi

# --- constants -----------------------------------------------------------------------------
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
# The image's apt sources. non-free-firmware, as Debian 12's installer does: nothing from it
# is installed, but bare metal may need firmware (NICs, RAID controllers) apt can then find.
COMPONENTS="main non-free-firmware"
ROOT_LABEL=dragonfly-root
ESP_LABEL=DF-ESP
CONSOLES="console=tty0 console=ttyS0,115200"
# Sizes in 512-byte sectors. 2 GiB: the installed system takes ~0.9 GiB, and a sparse file
# and zstd make the free space cost nothing; growpart takes the rest of the real disk.
DISK_MIB=2048
P1_START=2048 P1_SIZE=2048      # BIOS boot, 1 MiB
P2_START=4096 P2_SIZE=260096    # ESP, 127 MiB (as Debian's cloud images: room for a shim,
                                # fwupd capsules; FAT32 needs ≥ 65525 clusters anyway)
P3_START=264192                 # root: the rest but the last MiB (the backup GPT is there)
P3_SIZE=$((DISK_MIB * 2048 - P3_START - 2048))
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
ESP_SERIAL=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n' | tr a-f A-F)
ESP_UUID=${ESP_SERIAL:0:4}-${ESP_SERIAL:4:4}

# Packages, on top of --variant=minbase (Essential: yes, and apt). minbase, not "important":
# important adds ~40 packages a provisioned server does not need (cron, logrotate, nano,
# vim-tiny, ifupdown, nftables, man-db, …) and their services; here every package is named
# with its reason. Recommends are not installed (mmdebstrap's default).
PACKAGES=(
    linux-image-amd64   # the kernel, all of Debian's drivers (the cloud flavour lacks bare
                        #   metal's disk and NIC drivers); initramfs MODULES=most
    initramfs-tools     # (the kernel's first alternative, named to pin it) with busybox: a
    busybox             #   usable shell in the initramfs, and zstd: its compressor
    zstd
    systemd-sysv        # systemd as init
    udev                # devices, module autoloading, NIC names
    dbus                # hostnamectl and timedatectl (cloud-init sets the host name with it)
    libpam-systemd      # logind sessions for SSH logins
    systemd-timesyncd   # the clock (bare metal has no hypervisor clock)
    netplan.io          # network: cloud-init 22.4 renders network-config v2 as netplan (its
    systemd-resolved    #   own format: bonds, VLANs, bridges, routes, DNS) for
                        #   systemd-networkd; resolved puts DNS into /etc/resolv.conf
    netbase             # /etc/services, /etc/protocols
    openssh-server      # SSH (openssh-sftp-server comes with it: scp needs it)
    cloud-init          # first-boot configuration (NoCloud); pulls python3, isc-dhcp-client,
                        #   gdisk, locales
    cloud-guest-utils   # growpart (cloud-init's growpart module)
    e2fsprogs           # fsck.ext4, resize2fs (cloud-init's resizefs)
    dosfstools          # fsck.vfat for the ESP
    grub-pc             # GRUB for BIOS, the one that owns /etc/default/grub and update-grub;
    grub-efi-amd64-bin  #   the UEFI modules beside it (grub-efi-amd64 conflicts with grub-pc)
    sudo                # cloud-init's default user gets sudo
    ca-certificates     # https
    curl                # fetching things by hand, health checks
)
INCLUDE=$(IFS=,; echo "${PACKAGES[*]}")

# --- work area and cleanup -----------------------------------------------------------------
W=$(mktemp -d "$OUT/.build-$NAME.XXXXXX")
chmod 0755 "$W" # apt inside mmdebstrap downloads as _apt
ROOTFS=$W/rootfs
MNT=$W/mnt
LOOP=
MOUNTS=() # mount points, in mount order; unmounted in reverse

unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" ||
            say "warning: could not unmount ${MOUNTS[i]}"
    done
    MOUNTS=()
}
detach_loop() {
    [ -n "$LOOP" ] || return 0
    partx -d "$LOOP" 2>/dev/null || true
    losetup -d "$LOOP" || say "warning: could not detach $LOOP"
    LOOP=
}
cleanup() {
    local rc=$?
    set +e
    unmount_all
    detach_loop
    # Never remove through a mount that is still there (a /proc, a /dev).
    if findmnt -rn -o TARGET | grep -q "^$W/"; then
        say "warning: $W still has mounts under it; left in place"
    else
        rm -rf --one-file-system "$W"
    fi
    [ "$rc" -eq 0 ] || say "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mount_add() { # mount ARGS… TARGET: mount, and remember TARGET for the cleanup
    mount "$@"
    MOUNTS+=("${!#}")
}

T_START=$(now)
phase_start=$T_START
phase() { # NAME: ends the running phase, printing its time
    local t
    t=$(now)
    say "phase $1: $(secs "$phase_start" "$t") s"
    phase_start=$t
}

# --- 1. the root tree (mmdebstrap) ---------------------------------------------------------
say "building $IMG in $W (recipe ${RECIPE:0:12})"
cat >"$W/debconf" <<'EOF'
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF
# link_in_boot: /boot/vmlinuz and /boot/initrd.img (a kexec reads them from the root
# partition alone); written before the kernel is installed, which makes the links.
printf 'do_symlinks = yes\nlink_in_boot = yes\n' >"$W/kernel-img.conf"
# Documentation, man pages (no man-db) and translations stay out, also of later installs
# (mmdebstrap keeps these in /etc/dpkg/dpkg.cfg.d/); copyright files stay in.
mmdebstrap --mode=root --variant=minbase --include="$INCLUDE" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --essential-hook="chroot \"\$1\" debconf-set-selections < '$W/debconf'" \
    --essential-hook="cp '$W/kernel-img.conf' \"\$1/etc/kernel-img.conf\"" \
    "$SUITE" "$ROOTFS" \
    "deb $MIRROR $SUITE $COMPONENTS" \
    "deb $MIRROR $SUITE-updates $COMPONENTS" \
    "deb $SECURITY $SUITE-security $COMPONENTS" >&2
if [ ! -x "$ROOTFS/usr/bin/cloud-init" ] || [ ! -e "$ROOTFS/boot/vmlinuz" ]; then
    say "mmdebstrap did not produce a root with cloud-init and a kernel"
    exit 1
fi
phase mmdebstrap

# --- 2. configuration ----------------------------------------------------------------------
R=$ROOTFS
KREL=$(basename "$(readlink -f "$R/boot/vmlinuz")")
KREL=${KREL#vmlinuz-}
# mmdebstrap copied the build host's (mode and all); cloud-init sets the machine's.
rm -f "$R/etc/hostname"
echo localhost >"$R/etc/hostname"
cat >"$R/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
cat >"$R/etc/fstab" <<EOF
# Dragonfly Debian 12 image: by UUID, whatever disk the image was written to.
# <file system>                           <mount point> <type> <options>  <dump> <pass>
UUID=$ROOT_UUID /             ext4   errors=remount-ro 0 1
UUID=$ESP_UUID                            /boot/efi     vfat   umask=0077,nofail 0 2
EOF
mkdir -p "$R/boot/efi"
mkdir -p "$R/etc/default/grub.d"
cat >"$R/etc/default/grub.d/50-dragonfly.cfg" <<EOF
# Dragonfly Debian 12 image (packaging/images/debian-12.sh): boot after 1 s, show the menu
# and the boot on the screen and on the first serial port.
GRUB_TIMEOUT=1
GRUB_TIMEOUT_STYLE=menu
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="$CONSOLES"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
cat >"$R/etc/cloud/cloud.cfg.d/01_dragonfly-image.cfg" <<'EOF'
# Dragonfly Debian 12 image (packaging/images/debian-12.sh). A provisioning template adds
# 90-dragonfly.cfg (NoCloud seedfrom), which sorts after this file and may override it.
#
# NoCloud only (a cidata volume, a seed directory, or seedfrom): never wait on probing EC2,
# OpenStack or any other cloud's metadata service. ds-identify enables cloud-init with the
# one datasource listed.
datasource_list: [ NoCloud, None ]
# The host name on 127.0.1.1 in /etc/hosts (bare metal rarely has DNS for itself); the rest
# of the file is left alone.
manage_etc_hosts: localhost
# C.UTF-8 is built into glibc: no locale-gen at first boot (en_US.UTF-8 would compile one).
locale: C.UTF-8
# The host keys sshd loads (cloud-init 22.4 would also make a DSA key, which OpenSSH 9.2
# ignores).
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
EOF
printf 'LANG=C.UTF-8\n' >"$R/etc/default/locale"
# cloud-init's ssh module makes the host keys at first boot; this makes them when it did not
# (cloud-init disabled, or failed): sshd does not start without one.
cat >"$R/etc/systemd/system/dragonfly-ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys when the machine has none (Dragonfly image)
Documentation=man:ssh-keygen(1)
After=cloud-init.service
Before=ssh.service ssh.socket
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
systemctl --root="$R" --quiet enable dragonfly-ssh-host-keys.service systemd-networkd.service
# systemd-firstboot (empty machine-id: a first boot) would prompt on the console for what it
# finds unset; a headless machine would wait forever. cloud-init configures this image.
systemctl --root="$R" --quiet mask systemd-firstboot.service
# mmdebstrap's name for the dpkg excludes above, renamed for the admin who finds them.
if [ -f "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap" ]; then
    { echo "# Dragonfly image: no documentation, man pages or translations (debian-12.sh)."
      cat "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap"; } >"$R/etc/dpkg/dpkg.cfg.d/50dragonfly-image"
    rm "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
fi

# Nothing one machine must not share with another, nothing left from the build.
rm -f "$R"/etc/ssh/ssh_host_*
: >"$R/etc/machine-id"
[ -L "$R/var/lib/dbus/machine-id" ] || rm -f "$R/var/lib/dbus/machine-id"
rm -f "$R/var/lib/systemd/random-seed" "$R/etc/resolv.conf.bak"
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb
rm -f "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old
find "$R/var/log" -type f -delete
rm -rf "$R"/tmp/* "$R"/var/tmp/* "$R/var/lib/cloud"
mkdir -p "$R/var/lib/apt/lists/partial"

# The versions in the manifest.
# shellcheck disable=SC2016 # dpkg-query's ${…} fields, not the shell's
PKGVERSIONS=$(dpkg-query --admindir="$R/var/lib/dpkg" -W \
    -f '${Package}\t${Version}\n' "linux-image-$KREL" cloud-init openssh-server systemd \
    grub-pc netplan.io)
phase configure

# --- 3. the disk: partitions, filesystems (a loop device) ----------------------------------
RAW=$W/$NAME.raw
truncate -s $((DISK_MIB << 20)) "$RAW"
sfdisk -q --no-reread --no-tell-kernel "$RAW" <<EOF
label: gpt
unit: sectors
first-lba: 2048
start=$P1_START, size=$P1_SIZE, type=21686148-6449-6E6F-744E-656564454649, name="bios-boot"
start=$P2_START, size=$P2_SIZE, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
start=$P3_START, size=$P3_SIZE, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"
EOF
LOOP=$(losetup --find --show --partscan "$RAW")
# The kernel may not read GPT itself (this project's development VMs' kernel does not): partx
# adds the partitions from user space when they did not appear.
for n in 1 2 3; do
    [ -b "${LOOP}p$n" ] || partx -a -n "$n" "$LOOP"
done
for n in 1 2 3; do
    [ -b "${LOOP}p$n" ] || { say "${LOOP}p$n did not appear"; exit 1; }
done
# GRUB 2.06 reads neither metadata_csum_seed nor orphan_file. mke2fs -d fills the filesystem
# from the tree without mounting it: only live data is written (nothing of the downloaded
# .debs lingers in free blocks to bloat the compressed image).
fake_time=()
[ -z "${SOURCE_DATE_EPOCH:-}" ] || fake_time=(env "E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH")
"${fake_time[@]}" mke2fs -q -F -t ext4 -L "$ROOT_LABEL" -U "$ROOT_UUID" \
    -O '^metadata_csum_seed,^orphan_file' -E root_owner=0:0 -d "$ROOTFS" "${LOOP}p3"
rm -rf --one-file-system "$ROOTFS"
phase filesystems

# --- 4. the boot loaders -------------------------------------------------------------------
# BIOS: Debian's own grub-install (boot.img into the MBR, core.img into the BIOS boot
# partition) and update-grub, in the root mounted from the loop device. UEFI: the kernel
# this runs on may have no vfat (this project's development VMs' has none), so the ESP is never
# mounted, and grub-install, which insists on a mounted FAT --efi-directory, cannot write it:
# the same core image grub-install --removable would make (its modules and an early config
# that finds the root by UUID, then /boot/grub) comes from grub-mkimage, and mtools puts it
# into a FAT image as /EFI/BOOT/BOOTX64.EFI.
mkdir -p "$MNT"
mount_add "${LOOP}p3" "$MNT"
mount_add -t proc proc "$MNT/proc"
mount_add -t sysfs sysfs "$MNT/sys"
# A /dev of its own (not the host's): the loop device and its partitions, and the
# /dev/disk/by-uuid link udev would make, without which update-grub writes root=/dev/loopNp3.
mount_add -t tmpfs -o mode=0755,size=1m dragonfly-dev "$MNT/dev"
D=$MNT/dev
mknod -m 666 "$D/null" c 1 3
mknod -m 666 "$D/zero" c 1 5
mknod -m 666 "$D/full" c 1 7
mknod -m 666 "$D/random" c 1 8
mknod -m 666 "$D/urandom" c 1 9
ln -s /proc/self/fd "$D/fd"
mkdir -p "$D/disk/by-uuid"
for node in "$LOOP" "${LOOP}p1" "${LOOP}p2" "${LOOP}p3"; do
    majmin=$(cat "/sys/class/block/$(basename "$node")/dev")
    mknod -m 600 "$D/$(basename "$node")" b "${majmin%:*}" "${majmin#*:}"
done
ln -s "../../$(basename "$LOOP")p3" "$D/disk/by-uuid/$ROOT_UUID"
in_root() { chroot "$MNT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
in_root grub-install --target=i386-pc "/dev/$(basename "$LOOP")" 2>&1 | sed 's/^/  /' >&2
# shellcheck disable=SC2016 # expanded by the chroot's sh
in_root sh -eu -c '
    d=/boot/grub/x86_64-efi
    mkdir -p "$d"
    cp /usr/lib/grub/x86_64-efi/*.mod /usr/lib/grub/x86_64-efi/*.lst "$d/"
    printf "search.fs_uuid %s root\nset prefix=(\$root)/boot/grub\n" "$1" >"$d/load.cfg"
    grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -c "$d/load.cfg" -p /boot/grub \
        -o "$d/core.efi" part_gpt ext2 search_fs_uuid
' sh "$ROOT_UUID"
in_root update-grub 2>&1 | sed 's/^/  /' >&2
cp "$MNT/boot/grub/x86_64-efi/core.efi" "$W/BOOTX64.EFI"
# What must be true of the result.
CFG=$MNT/boot/grub/grub.cfg
[ -f "$MNT/boot/grub/i386-pc/core.img" ] || { say "no i386-pc core.img"; exit 1; }
grep -q "root=UUID=$ROOT_UUID ro $CONSOLES" "$CFG" ||
    { say "grub.cfg does not boot root=UUID=$ROOT_UUID with $CONSOLES"; exit 1; }
if grep -q loop "$CFG"; then say "grub.cfg names the build's loop device"; exit 1; fi
CMDLINE=$(grep -m1 -o "root=UUID=$ROOT_UUID ro $CONSOLES" "$CFG")
if ls "$MNT"/etc/ssh/ssh_host_* >/dev/null 2>&1; then say "SSH host keys in the image"; exit 1; fi
[ ! -s "$MNT/etc/machine-id" ] || { say "/etc/machine-id is not empty"; exit 1; }
unmount_all
if ! out=$(e2fsck -fn "${LOOP}p3" 2>&1); then
    printf '%s\n' "$out" >&2
    say "e2fsck found errors in the root filesystem"
    exit 1
fi
detach_loop
# The ESP: FAT32, built as a file, written into p2.
ESP=$W/esp.fat
truncate -s $((P2_SIZE * 512)) "$ESP"
mkfs.vfat -F 32 -n "$ESP_LABEL" -i "$ESP_SERIAL" "$ESP" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$ESP" ::/EFI ::/EFI/BOOT
mcopy -i "$ESP" "$W/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
fsck.vfat -n "$ESP" >/dev/null
dd if="$ESP" of="$RAW" bs=512 seek="$P2_START" conv=notrunc,sparse status=none
rm -f "$ESP"
DISK_GUID=$(sfdisk --disk-id "$RAW")
PARTUUIDS=$(sfdisk --part-uuid "$RAW" 1; sfdisk --part-uuid "$RAW" 2; sfdisk --part-uuid "$RAW" 3)
phase bootloader

# --- 5. compress, digest, manifest ---------------------------------------------------------
[ -z "${SOURCE_DATE_EPOCH:-}" ] || touch -d "@$SOURCE_DATE_EPOCH" "$RAW"
RAW_SHA=$(sha256sum "$RAW" | cut -d' ' -f1)
phase sha256
# Measured on two busy cores (packaging/README.md): -3 8 s → 224 MiB, -9 32 s → 198 MiB,
# -12 38 s → 196 MiB, -19 480 s → 177 MiB. -19's 10 % is not worth eight minutes.
# A constant, not a knob: the recipe is this file, and "cached" must mean the same outputs.
ZLEVEL=12
zstd -q -T0 "-$ZLEVEL" "$RAW" -o "$W/$NAME.raw.zst"
phase "zstd -$ZLEVEL"
ZST_SHA=$(sha256sum "$W/$NAME.raw.zst" | cut -d' ' -f1)
BUILT=${SOURCE_DATE_EPOCH:-$(date +%s)}
python3 - "$W/$NAME.json" "$NAME" "$RAW" "$RAW_SHA" "$W/$NAME.raw.zst" "$ZST_SHA" \
    "$BUILT" "$RECIPE" "$KREL" "$CMDLINE" "$ROOT_LABEL" "$ROOT_UUID" "$ESP_LABEL" \
    "$ESP_UUID" "$DISK_GUID" "$P1_START:$P1_SIZE" "$P2_START:$P2_SIZE" "$P3_START:$P3_SIZE" \
    "$PARTUUIDS" "$PKGVERSIONS" <<'PY'
import datetime, json, os, sys
(out, name, raw, raw_sha, zst, zst_sha, built, recipe, krel, cmdline, root_label, root_uuid,
 esp_label, esp_uuid, disk_guid, p1, p2, p3, partuuids, pkgs) = sys.argv[1:]
partuuids = partuuids.split()
def part(n, spec, pname, type_, **extra):
    start, size = (int(x) for x in spec.split(":"))
    return {"number": n, "name": pname, "type": type_, "partuuid": partuuids[n - 1].lower(),
            "startBytes": start * 512, "sizeBytes": size * 512, **extra}
versions = dict(line.split("\t", 1) for line in pkgs.splitlines())
m = {
    "name": name,
    "format": "raw",
    "compression": "zstd",
    "size": os.path.getsize(raw),
    "sha256": raw_sha,
    "compressedSize": os.path.getsize(zst),
    "compressedSha256": zst_sha,
    "built": datetime.datetime.fromtimestamp(int(built), datetime.timezone.utc)
        .strftime("%Y-%m-%dT%H:%M:%SZ"),
    "recipeSha256": recipe,
    "packages": {
        "kernel": {"name": f"linux-image-{krel}", "version": versions[f"linux-image-{krel}"],
                   "release": krel},
        "cloud-init": versions["cloud-init"],
        "openssh-server": versions["openssh-server"],
        "systemd": versions["systemd"],
        "grub-pc": versions["grub-pc"],
        "netplan.io": versions["netplan.io"],
    },
    "cmdline": cmdline,
    "kernel": {"path": "/boot/vmlinuz", "release": krel},
    "initrd": {"path": "/boot/initrd.img"},
    "defaultUser": "debian",
    "diskGuid": disk_guid.lower(),
    "partitions": [
        part(1, p1, "bios-boot", "21686148-6449-6e6f-744e-656564454649",
             contents="GRUB i386-pc core.img"),
        part(2, p2, "esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", filesystem="vfat",
             label=esp_label, uuid=esp_uuid, contents="/EFI/BOOT/BOOTX64.EFI (GRUB x86_64-efi)"),
        part(3, p3, "root", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", filesystem="ext4",
             label=root_label, uuid=root_uuid),
    ],
}
with open(out, "w") as f:
    json.dump(m, f, indent=2)
    f.write("\n")
PY
(cd "$W" && echo "$ZST_SHA  $NAME.raw.zst" >"$NAME.raw.zst.sha256")
RAW_SIZE=$(stat -c %s "$RAW")
RAW_USED=$(($(stat -c %b "$RAW") * 512))
ZST_SIZE=$(stat -c %s "$W/$NAME.raw.zst")
# Into place: the old manifest goes first and the new one comes last, so a manifest always
# describes the files beside it.
rm -f "$MANIFEST"
mv -f "$W/$NAME.raw.zst" "$IMG"
mv -f "$W/$NAME.raw.zst.sha256" "$SUM"
mv -f "$W/$NAME.json" "$MANIFEST"
phase outputs
say "kernel $KREL; raw $(mib "$RAW_SIZE") ($(mib "$RAW_USED") allocated)," \
    "zstd -$ZLEVEL $(mib "$ZST_SIZE"); built in $(secs "$T_START" "$(now)") s"
say "$IMG"
echo "built $IMG"
