#!/usr/bin/env bash
# Build the stock-kernel guest image: Debian's cloud kernel (bzImage and the ELF vmlinux
# inside it) and a busybox initramfs whose /init runs the command given on the kernel
# command line. Everything comes from Debian's packages (apt-get download). Idempotent:
# cached under build/stock/, rebuilt only when missing.
#
# The initramfs also carries the kernel's virtio-over-PCI modules (virtio, virtio_ring,
# virtio_pci and its helpers, virtio_blk) from the same package, loaded by /init.
#
# Output: build/stock/{bzImage,vmlinux,initramfs.cpio}
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=${FTVM_STOCK_DIR:-$top/build/stock}
. "$top/scripts/lib.sh"

mkdir -p "$out/debs"
ensure_tools dpkg-deb:dpkg python3:python3 lz4:lz4

apt_ready() {
    apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 && apt-cache show busybox-static >/dev/null 2>&1
}
if ! apt_ready; then
    log "refreshing Debian package lists"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
fi

# fetch PACKAGE: download the .deb once into the cache.
fetch() {
    local pkg=$1
    if ! ls "$out/debs/${pkg}"_*.deb >/dev/null 2>&1; then
        log "downloading $pkg"
        (cd "$out/debs" && apt-get download -q "$pkg" >&2)
    fi
    ls "$out/debs/${pkg}"_*.deb | head -n1
}

if [ ! -s "$out/bzImage" ]; then
    # The meta package names the current cloud kernel; take that one.
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || { log "cannot find the cloud kernel behind linux-image-cloud-amd64"; exit 1; }
    deb=$(fetch "$kpkg")
    rm -rf "$out/kernel-pkg"
    log "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$out/kernel-pkg"
    cp "$(ls "$out"/kernel-pkg/boot/vmlinuz-* | head -n1)" "$out/bzImage.tmp"
    echo "$kpkg" > "$out/kernel-version"
    mv "$out/bzImage.tmp" "$out/bzImage"
    rm -rf "$out/kernel-pkg"
fi

if [ ! -s "$out/vmlinux" ]; then
    log "extracting the ELF vmlinux from the bzImage"
    python3 "$here/extract-vmlinux.py" "$out/bzImage" "$out/vmlinux.tmp"
    mv "$out/vmlinux.tmp" "$out/vmlinux"
fi

# The virtio modules of the kernel package, unpacked once into modules/.
virtio_modules="drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_pci.ko
drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci_legacy_dev.ko drivers/block/virtio_blk.ko
net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko"
modules_missing() {
    local m
    for m in $virtio_modules; do [ -s "$out/modules/$(basename "$m")" ] || return 0; done
    return 1
}
if modules_missing; then
    kpkg=$(cat "$out/kernel-version")
    deb=$(fetch "$kpkg")
    rm -rf "$out/modules" "$out/modules-pkg"
    mkdir -p "$out/modules" "$out/modules-pkg"
    log "extracting the virtio modules from $(basename "$deb")"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$out/modules-pkg" --wildcards \
        $(for m in $virtio_modules; do printf './lib/modules/*/kernel/%s ' "$m"; done)
    for m in $virtio_modules; do
        cp "$(ls "$out"/modules-pkg/lib/modules/*/kernel/"$m" | head -n1)" "$out/modules/"
    done
    rm -rf "$out/modules-pkg"
fi
modules=$(for m in $virtio_modules; do printf '%s ' "$out/modules/$(basename "$m")"; done)

# The guest workload (the key/value service, static binaries) goes into every stock image,
# so that tests, demo and benchmarks boot the same one.
"$top/scripts/build-kv.sh"
# Only what runs in the guest: the clients run on other hosts (build/kv/bin/kvclient).
# Every megabyte of initramfs costs boot time here, where guest kernel mode is emulated.
kv_guest=$top/build/kv/guest
mkdir -p "$kv_guest"
for b in viewservice kvserver kv-init; do
    cmp -s "$top/build/kv/bin/$b" "$kv_guest/$b" 2>/dev/null || cp "$top/build/kv/bin/$b" "$kv_guest/$b"
done
rm -f "$kv_guest/kvclient"
kv_bins=$(find "$kv_guest" -type f | sort | tr '\n' ' ')
stamp=$(cat "$here/init" "$here/mkinitramfs.py" $kv_bins $modules | sha256sum | cut -c1-16)
if [ ! -s "$out/initramfs.cpio" ] || [ "$(cat "$out/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
    deb=$(fetch busybox-static)
    rm -rf "$out/busybox-pkg"
    dpkg-deb -x "$deb" "$out/busybox-pkg"
    log "building the busybox initramfs"
    extra=()
    extra=(--bin-dir "$kv_guest")
    for m in $modules; do extra+=(--module "$m"); done
    python3 "$here/mkinitramfs.py" --busybox "$out/busybox-pkg/bin/busybox" \
        --init "$here/init" "${extra[@]}" --output "$out/initramfs.cpio.tmp"
    mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
    echo "$stamp" > "$out/initramfs.stamp"
    rm -rf "$out/busybox-pkg"
fi
log "stock guest image ready in $out ($(cat "$out/kernel-version"))"
ls -l "$out/bzImage" "$out/vmlinux" "$out/initramfs.cpio" >&2
