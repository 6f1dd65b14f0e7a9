#!/usr/bin/env bash
# The main job: install what ftvm needs, build it and the guest images, show the
# deterministic machine on tiny guests, record and replay one, pull a primary's power
# under the counter guest, then under the stock guest serving key/value clients on
# simulated hosts (scripts/demo-pair.sh), and end with Debian's stock cloud kernel booted
# to its busybox userland, its console on this terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_base_tools
require_kvm
log "building ftvm (release)"
cargo build --release --locked -p ftvm -p ftvm-test-guests
ftvm=target/release/ftvm
guest() { ls -t target/release/build/ftvm-test-guests-*/out/"$1".elf | head -n1; }

log "booting the timer guest: PIT interrupts through the PIC, HLT between them"
"$ftvm" run --kernel "$(guest timer)" --mem 16 </dev/null
log "booting the serial guest, typing 'hello from the host.' into its console"
printf 'hello from the host.' | "$ftvm" run --kernel "$(guest serial)" --mem 16
log "recording the user-mode guest (a CPL3 busy loop with the timer on), then replaying it"
log_file=$(mktemp /tmp/ftvm-demo-XXXXXX.log)
"$ftvm" record --log "$log_file" --kernel "$(guest usermode)" --mem 16 </dev/null
"$ftvm" replay --log "$log_file" --kernel "$(guest usermode)" --mem 16
rm -f "$log_file"

log "fault tolerance: the counter guest under a primary and a backup; the primary's power is pulled"
shared=$(mktemp -d /tmp/ftvm-demo-shared-XXXXXX)
# The pair's secret: both VMMs hold it; the channel admits nobody else.
"$ftvm" keygen "$shared/pair.key"
port=$((20000 + RANDOM % 20000))
"$ftvm" primary --shared-dir "$shared" --name counter --key-file "$shared/pair.key" --listen "127.0.0.1:$port" \
    --peer-timeout 300 --kernel "$(guest counter)" --mem 16 </dev/null >/dev/null &
primary_pid=$!
sleep 0.5
"$ftvm" backup --shared-dir "$shared" --name counter --key-file "$shared/pair.key" --primary "127.0.0.1:$port" \
    --peer-timeout 300 </dev/null >/dev/null &
backup_pid=$!
sleep 1.5
"$ftvm" status --shared-dir "$shared" --name counter
log "SIGKILL to the primary (pulling its power)"
kill -9 "$primary_pid"
wait "$backup_pid" || true
"$ftvm" status --shared-dir "$shared" --name counter
log "the guest's console stream, as an observer saw it (every number once, in order):"
"$ftvm" console --shared-dir "$shared" --name counter | tail -n 4
rm -rf "$shared"

log "fetching and building the stock guest image (Debian cloud kernel + busybox)"
guest-images/stock/build.sh
log "the mission: the stock guest with its NIC and disks under a primary on host A and a"
log "backup on host B, key/value clients on a third host, host A's power pulled"
scripts/demo-pair.sh
log "booting the stock kernel on the user-space PIC/PIT platform"
log "(on hosts whose KVM emulates kernel mode this takes several minutes)"
log "at the '# ' prompt type commands; 'exit 0' powers the guest off"
exec "$ftvm" run --kernel build/stock/vmlinux --initrd build/stock/initramfs.cpio --mem 256 \
    --cmdline '-- echo hello from the stock kernel; uname -a; cat /proc/interrupts'
