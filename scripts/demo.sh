#!/usr/bin/env bash
# The main job: install what ftvm needs, build it, and boot guests on the deterministic
# machine with their serial consoles on this terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_base_tools
require_kvm
log "building ftvm (release)"
cargo build --release --locked -p ftvm -p ftvm-test-guests
ftvm=target/release/ftvm
guest() { ls target/release/build/ftvm-test-guests-*/out/"$1".elf | head -n1; }

log "booting the timer guest: PIT interrupts through the PIC, HLT between them"
"$ftvm" run --kernel "$(guest timer)" --mem 16
log "booting the serial guest, typing 'hello from the host.' into its console"
printf 'hello from the host.' | "$ftvm" run --kernel "$(guest serial)" --mem 16
log "booting the user-mode guest: a CPL3 busy loop with the timer running"
"$ftvm" run --kernel "$(guest usermode)" --mem 16
log "done"
