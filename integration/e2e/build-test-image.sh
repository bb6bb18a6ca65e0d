#!/bin/bash
# Builds the end-to-end test "agent": a Debian kernel and a busybox initramfs whose /init
# prints one marker line on the serial console and powers off.
#
#   build-test-image.sh CACHE_DIR OUT_DIR
#
# CACHE_DIR keeps the downloaded kernel package (apt-get download, ~70 MB, never installed)
# across rebuilds; OUT_DIR receives vmlinuz and initrd.img. Called by the harness
# (dragonfly_integration::image), which caches OUT_DIR under target/e2e-cache/ and holds a
# file lock so that parallel tests build once. Needs: apt-get, dpkg, busybox-static (also its
# cpio applet), gzip. Follows /work/shared/lab/10-build-initramfs.sh.
#
# The marker, from /init:
#   DRAGONFLY-E2E-MARKER mac=<dragonfly.mac= on the kernel command line, or "none">
#                        nic=<eth0's MAC, once its driver loaded> mode=<dragonfly.mode= or "none">
# Seeing it with the right MAC proves DHCP answered, the boot script for that MAC ran and the
# kernel and initrd came over HTTP.
set -euo pipefail
CACHE=$1
OUT=$2
KPKG=${KPKG:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')}
[ -n "$KPKG" ] || { echo "no linux-image-*-amd64 package known to apt (apt-get update?)" >&2; exit 1; }
KVER=${KPKG#linux-image-}
mkdir -p "$CACHE/kernel" "$OUT"
cd "$CACHE/kernel"
if ! ls "${KPKG}"_*.deb >/dev/null 2>&1; then
    rm -rf partial && mkdir partial
    (cd partial && apt-get download "$KPKG")
    mv partial/*.deb . && rmdir partial
fi
if [ ! -e "x-$KVER/boot/vmlinuz-$KVER" ]; then
    rm -rf "x-$KVER.tmp" && dpkg -x "${KPKG}"_*.deb "x-$KVER.tmp" && mv "x-$KVER.tmp" "x-$KVER"
fi
M=$CACHE/kernel/x-$KVER/lib/modules/$KVER/kernel

R=$(mktemp -d "$OUT/.initramfs.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,proc,sys,dev,tmp,mod}
cp /bin/busybox "$R/bin/busybox"   # busybox-static: statically linked
# Load order matters (no modules.dep): virtio chain, failover chain, e1000.
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
    drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
    drivers/net/net_failover drivers/net/virtio_net drivers/net/ethernet/intel/e1000/e1000; do
    cp "$M/$m.ko" "$R/mod/"
    basename "$m" >>"$R/mod/order"
done
cat >"$R/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mod/order); do insmod /mod/$m.ko 2>/dev/null; done
arg() { echo " $(cat /proc/cmdline)" | sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p"; }
i=0; while [ ! -e /sys/class/net/eth0/address ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
MAC=$(arg dragonfly.mac); MODE=$(arg dragonfly.mode)
NIC=$(cat /sys/class/net/eth0/address 2>/dev/null)
echo "DRAGONFLY-E2E-MARKER mac=${MAC:-none} nic=${NIC:-none} mode=${MODE:-none} uptime=$(cut -d' ' -f1 /proc/uptime)"
sync; poweroff -f
INIT
chmod +x "$R/init"
(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -9) >"$OUT/initrd.img.tmp"
cp "$CACHE/kernel/x-$KVER/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
ls -la "$OUT"
