#!/usr/bin/env bash
# scripts/stock-net-snapshot.sh [FTVM]
#
# The stock kernel booted once with its network card and two disks, snapshotted at its
# shell with the key/value service running, for the benchmarks and the demo (the test
# suite boots its own). Cached in build/stock/net-snapshot/ (keyed by the image); a boot
# takes 10 to 25 minutes on hosts whose KVM emulates kernel mode.
#
#   snap/         the snapshot (its NIC was on a TAP called tap0; restore onto any TAP)
#   data.img      /dev/vda: 64 MiB ext4 mounted at /mnt, as it was at the snapshot
#   ro.img        /dev/vdb: 16 MiB ext4 holding seed.txt, attached read-only
#
# A VM restored from it needs copies of both images (`--disk COPY --disk RO,readonly`).
# The guest's address is 10.77.0.100/24, the simulated LAN's (scripts/hosts.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ftvm=${1:-$PWD/target/release/ftvm}
ensure_base_tools
ensure_tools mkfs.ext4:e2fsprogs
require_kvm
guest-images/stock/build.sh >&2
out=build/stock/net-snapshot
stamp=$(cat build/stock/initramfs.stamp build/stock/kernel-version 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$out/snap/manifest.json" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
rm -rf "$out"
mkdir -p "$out/seed"
echo seeded-by-mkfs >"$out/seed/seed.txt"
truncate -s 64M "$out/data.img"
truncate -s 16M "$out/ro.img"
mkfs.ext4 -q -F "$out/data.img"
mkfs.ext4 -q -F -d "$out/seed" "$out/ro.img"
rm -rf "$out/seed"
hosts=ftvmsnap$$
scripts/hosts.sh up "$hosts" >/dev/null
trap 'scripts/hosts.sh down "$hosts" >/dev/null 2>&1 || true' EXIT
log "booting the stock kernel with its NIC and disks, then snapshotting it (10-25 minutes here)"
ip netns exec "$hosts-a" "$ftvm" run --kernel build/stock/vmlinux --initrd build/stock/initramfs.cpio \
    --net tap=tap0 --disk "$out/data.img" --disk "$out/ro.img,readonly" \
    --cmdline 'ftvm.disk=/dev/vda ftvm.ip=10.77.0.100/24 -- kv-init service' \
    --snapshot-on 'ftvm-init: shell' --snapshot-dir "$out/snap" --exit-after-snapshot \
    </dev/null >"$out/boot.out" 2>"$out/boot.err" &
boot=$!
# Progress: the guest's last console line every half minute.
while kill -0 "$boot" 2>/dev/null; do
    sleep 30
    kill -0 "$boot" 2>/dev/null && log "booting: $(tail -c 300 "$out/boot.out" | tr -d '\r' | tail -n1 | cut -c1-100)"
done
wait "$boot" || { log "the boot failed; see $out/boot.err"; tail -n 5 "$out/boot.err" >&2; exit 1; }
grep -q 'kv-init: service on' "$out/boot.out" || { log "the key/value service did not start: $out/boot.out"; exit 1; }
echo "$stamp" >"$out/stamp"
log "snapshot in $out/snap"
