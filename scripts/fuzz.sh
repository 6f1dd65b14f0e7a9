#!/usr/bin/env bash
# scripts/fuzz.sh SECONDS [TARGET...]: build ftvm's libFuzzer targets (fuzz/) and run each
# for SECONDS (all targets when none is named). Corpora grow in fuzz/corpus/<target>
# (only the generated seed-* files are in git); a crash input is kept in
# fuzz/artifacts/<target>/ and makes the script exit non-zero after the summary table.
#
# How it builds on the STABLE toolchain, without cargo-fuzz: cargo-fuzz asks for nightly
# because of -Zsanitizer=address and friends, and even with `--sanitizer none` it still
# passes other -Z flags, so stable would need RUSTC_BOOTSTRAP=1 (unstable features on a
# stable compiler, which this project does not want to rely on). What libFuzzer needs is
# only the SanitizerCoverage instrumentation, and that is reachable with stable codegen
# options: -Cpasses=sancov-module plus the LLVM options below (the same ones cargo-fuzz
# uses). libfuzzer-sys compiles libFuzzer itself from C++ with the system compiler (g++)
# and provides main(). We give up AddressSanitizer, which safe Rust hardly needs; panics,
# arithmetic overflow (overflow-checks are on in fuzz/Cargo.toml's release profile),
# allocation limits and hangs are all caught.
#
# --target is passed explicitly so that RUSTFLAGS apply to the targets only, not to build
# scripts and proc macros (serde_derive instrumented without libFuzzer would not load).
# The fuzz crate is its own workspace with its own target directory, so the instrumented
# build never mixes with the main workspace's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ALL_TARGETS=(log_decoder channel_decoder output_gate device_states virtio_queues replay_reader kv_frames kv_cores snapshot_loader page_codec)

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]   (targets: ${ALL_TARGETS[*]})" >&2
    exit 2
fi
seconds=$1
shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || { log "no such fuzz target: $t"; exit 2; }
done

# libfuzzer-sys builds libFuzzer with a C++ compiler; cc-rs finds it as c++.
ensure_tools c++:g++ cc:gcc
command -v cargo >/dev/null 2>&1 || { log "cargo (Rust toolchain) is required"; exit 1; }

host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cforce-frame-pointers=yes"
log "building the fuzz targets for $host (stable, SanitizerCoverage via RUSTFLAGS)"
# Not --locked: fuzz/Cargo.lock follows the path crates' dependencies, which change in
# commits that never build the fuzz crate; a stale lock is refreshed rather than fatal.
cargo build --manifest-path fuzz/Cargo.toml --release --target "$host" --bins
bin=$CARGO_TARGET_DIR/$host/release

# Seeds: real frames, messages and states from ftvm's own encoders (same files each time).
"$bin/gen_seeds" fuzz/corpus

# The targets' scratch files (the snapshot loader's directories) go to a directory of
# this run's own, removed however the run ends: libFuzzer exits without destructors.
scratch=$(mktemp -d -t ftvm-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch

results=()
failed=0
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    artifacts=fuzz/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    out=$(mktemp)
    # Crash files are the artifacts newer than this stamp (the log file itself is written
    # until the end, so it cannot serve).
    stamp=$(mktemp)
    log "fuzzing $t for ${seconds}s"
    status=0
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: leaves room for the other
    # jobs on the machine and turns an unbounded allocation into a finding.
    # A target's dictionary (fuzz/dict/<target>.dict) holds values mutation rarely finds.
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    "$bin/$t" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=1024 -artifact_prefix="$artifacts/" "${dict[@]}" "$corpus" \
        >"$out" 2>&1 || status=$?
    # libFuzzer's last status line: "#N DONE cov: C ft: F corp: ..." (or the last
    # progress line if it stopped early); final stats give the exact executions.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
    line=$(grep -E '^#[0-9]+' "$out" | tail -1 || true)
    [ -n "$execs" ] || execs=$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$line")
    cov=$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$line")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$line")
    corp=$(sed -E -n 's/.* corp: ([0-9]+).*/\1/p' <<<"$line")
    crashes=$(find "$artifacts" -type f -newer "$stamp" | wc -l)
    if [ "$status" -ne 0 ]; then
        failed=1
        log "$t: libFuzzer exited with $status; its output:"
        grep -v -E '^#[0-9]+' "$out" | tail -40 >&2
        find "$artifacts" -type f -newer "$stamp" -printf '[ftvm] crash input kept: %p\n' >&2
        [ "$crashes" -gt 0 ] || crashes="?"
    fi
    results+=("$(printf '%-16s %12s %7s %7s %7s %8s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" \
        "${corp:-?}" "$crashes")")
    rm -f "$out" "$stamp"
done

printf '%-16s %12s %7s %7s %7s %8s\n' target executions cov ft corpus crashes
printf '%s\n' "${results[@]}"
exit $failed
