#!/usr/bin/env bash
# Build the guest workload's binaries (viewservice, kvserver, kvclient) statically linked, in
# release mode, into build/kv/bin/, with the busybox init fragment as build/kv/bin/kv-init.
# The stock-kernel image script (guest-images/stock/build.sh) copies everything in
# build/kv/bin/ into the initramfs's /bin.
#
# Static linking uses glibc's libc.a (+crt-static on x86_64-unknown-linux-gnu); the binaries
# only use numeric addresses, so no name service is needed at run time.
#
# Idempotent: cargo rebuilds only what changed, and files are replaced only when they differ.
# Environment: KV_TARGET_DIR (default build/kv-target), KV_OUT (default build/kv/bin),
# CARGO_BUILD_JOBS as usual.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${KV_TARGET_DIR:-$top/build/kv-target}
out=${KV_OUT:-$top/build/kv/bin}
triple=x86_64-unknown-linux-gnu
bins=(viewservice kvserver kvclient)

log() { printf '[build-kv] %s\n' "$*" >&2; }

command -v cargo >/dev/null 2>&1 || { log "cargo (Rust toolchain) is required"; exit 1; }
if [ ! -e /usr/lib/x86_64-linux-gnu/libc.a ] && [ ! -e /usr/lib64/libc.a ]; then
    log "glibc's static libc.a is missing (Debian: apt-get install libc6-dev)"
    exit 1
fi

log "building ${bins[*]} (release, static) in $target_dir"
# --target keeps RUSTFLAGS away from build scripts and proc macros, which must stay dynamic.
# Debug info is stripped (the workspace's release profile keeps it) so that the initramfs
# stays small; symbols remain for backtraces.
(cd "$top" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    CARGO_TARGET_DIR="$target_dir" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked --target "$triple" -p ftvm-kv --bins)

mkdir -p "$out"
install_if_changed() {
    local src=$1 dst=$2
    if ! cmp -s "$src" "$dst" 2>/dev/null; then
        install -m 0755 "$src" "$dst.tmp"
        mv "$dst.tmp" "$dst"
        log "installed $dst"
    else
        log "up to date: $dst"
    fi
}
for b in "${bins[@]}"; do
    bin="$target_dir/$triple/release/$b"
    # A static executable has no program interpreter (PT_INTERP): check with readelf when
    # present, else with file.
    if command -v readelf >/dev/null 2>&1; then
        if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
            log "$b is dynamically linked"
            exit 1
        fi
    elif command -v file >/dev/null 2>&1; then
        file "$bin" | grep -Eq 'statically linked|static-pie linked' || {
            log "$b is not statically linked: $(file "$bin")"
            exit 1
        }
    fi
    install_if_changed "$bin" "$out/$b"
done
install_if_changed "$top/guest-images/kv/init-kv.sh" "$out/kv-init"
log "done: $(ls "$out" | tr '\n' ' ')"
