#!/usr/bin/env bash
# Run every ftvm test: unit tests, the tiny guests under KVM, bad-input and determinism
# checks, the key/value workload. Installs what the tests need first (idempotently).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_base_tools
# The stock-kernel test makes ext4 disks and reads them back on the host; the end-to-end
# tests' clients are Python; scripts/hosts.sh needs iproute2.
ensure_tools mkfs.ext4:e2fsprogs debugfs:e2fsprogs python3:python3 ip:iproute2 ping:iputils-ping
require_kvm
log "building the stock-kernel guest image (cached after the first run)"
guest-images/stock/build.sh
log "building and running the test suite"
cargo build --workspace --all-targets --locked
log "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads=2
# Every fuzz target briefly (issue 12): a regression in a decoder or a device's state
# validation shows here; longer runs are `scripts/fuzz.sh SECONDS` by hand.
log "fuzzing each target for ${FUZZ_SECONDS:-10}s"
scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
