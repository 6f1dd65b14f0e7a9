#!/usr/bin/env bash
# Pull the primary's power under the stock kernel and watch the failover.
#
#   scripts/stock-failover.sh [TRIALS]
#
# Boots Debian's cloud kernel once to its shell and snapshots it (cached in
# build/stock/snapshot: about 10 minutes on hosts whose KVM emulates kernel mode), then per
# trial: a primary restored from the snapshot, a backup that joins it by state transfer,
# a shell loop printing n-0..n-59 on the guest's console, SIGKILL to the primary at a
# random point of the loop, and the backup going live. Each trial checks the console
# stream an observer sees (every number once, in order, the live guest finishing the loop)
# and prints one line of figures (with the primary's output delay and the backup's lag,
# from `ftvm status` just before the kill); the last line sums up. Exit status 1 if any
# trial failed. PLACE_EVENTS=breakpoint runs the primaries with `--place-events breakpoint`
# (kicks in kernel mode as event points; the default, `delta`, ships every kick as a
# checkpoint delta).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

trials=${1:-1}
place_events=${PLACE_EVENTS:-delta}
case $trials in '' | *[!0-9]*) log "TRIALS must be a number, not '$trials'"; exit 2 ;; esac

ensure_base_tools
require_kvm
log "building ftvm (release)"
cargo build --release --locked -p ftvm
ftvm=$PWD/target/release/ftvm
guest-images/stock/build.sh
snap=build/stock/snapshot
if [ ! -f "$snap/manifest.json" ]; then
    log "booting the stock kernel to its shell and snapshotting it (several minutes here)"
    rm -rf "$snap"
    "$ftvm" run --kernel build/stock/vmlinux --initrd build/stock/initramfs.cpio --mem 256 \
        --snapshot-on 'ftvm-init: shell' --snapshot-dir "$snap" --exit-after-snapshot \
        </dev/null >&2
fi

trial_workspace ftvm-stock-failover "the failed trials' files (console stream, both VMMs' stderr)"

passed=0
for ((trial = 1; trial <= trials; trial++)); do
    dir=$work/$trial
    mkdir -p "$dir/shared"
    "$ftvm" keygen "$dir/pair.key" 2>/dev/null
    port=$((20000 + RANDOM % 20000))
    kill_at=$((4 + RANDOM % 40))
    mkfifo "$dir/stdin"
    "$ftvm" primary --shared-dir "$dir/shared" --name stock --key-file "$dir/pair.key" --listen "127.0.0.1:$port" \
        --place-events "$place_events" --restore "$snap" <"$dir/stdin" >/dev/null 2>"$dir/primary.err" &
    primary=$!
    pids+=("$primary")
    exec 7>"$dir/stdin"
    wait_for "$dir/primary.err" "waiting for a backup" 60 || { log "trial $trial: the primary did not start"; cat "$dir/primary.err" >&2; exit 1; }
    "$ftvm" backup --shared-dir "$dir/shared" --name stock --key-file "$dir/pair.key" --primary "127.0.0.1:$port" \
        </dev/null >/dev/null 2>"$dir/backup.err" &
    backup=$!
    pids+=("$backup")
    wait_for "$dir/primary.err" "protected:" 300 || { log "trial $trial: the backup never caught up"; exit 1; }
    echo 'i=0; while [ $i -lt 60 ]; do echo n-$i; i=$((i+1)); sleep 0.2; done; exit 0' >&7
    console=$dir/shared/stock.console
    if ! wait_for "$console" "n-$kill_at"$'\r' 300; then
        log "trial $trial: the guest never printed n-$kill_at"
        exit 1
    fi
    "$ftvm" status --shared-dir "$dir/shared" --name stock >"$dir/status" 2>&1 || true
    sed 's/^/    /' "$dir/status" >&2
    figures=$(grep -o 'lag [0-9]* exits' "$dir/status" | head -n1)
    figures="$figures, output $(grep -o 'delay avg [0-9.]* ms max [0-9.]* ms' "$dir/status" | head -n1)"
    log "trial $trial: SIGKILL to the primary after n-$kill_at"
    kill -9 "$primary"
    if timeout 600 tail --pid="$backup" -f /dev/null; then
        wait "$backup" && status=0 || status=$?
    else
        kill -9 "$backup" 2>/dev/null || true
        wait "$backup" 2>/dev/null || true
        status="still running 600 s after the kill"
    fi
    exec 7>&-
    # The lines of the loop, without the shell prompt that can land in front of the first.
    numbers() { tr -d '\r' <"$console" | sed 's/^# //' | grep '^n-' || true; }
    seen=$(numbers | wc -l)
    in_order=yes
    numbers | cmp -s - <(for i in $(seq 0 $((seen - 1))); do echo "n-$i"; done) || in_order=no
    live=$(grep -o 'live at exit [0-9]* [0-9]* ms after the loss was detected ([^)]*)' "$dir/backup.err" || echo "never went live")
    if [ "$seen" = 60 ] && [ "$in_order" = yes ] && [ "$status" = 0 ]; then
        passed=$((passed + 1))
        verdict=ok
    else
        verdict=FAILED
        failed=$((failed + 1))
    fi
    points=$(grep -o 'event points: [^)]*' "$dir/backup.err" | head -n1)
    printf 'trial %d: %s: killed after n-%d; %s; console n-0..n-%d in order: %s; backup status %s; before the kill: %s; backup %s\n' \
        "$trial" "$verdict" "$kill_at" "$live" $((seen - 1)) "$in_order" "$status" "$figures" "${points:-(no event points line)}"
    [ "$verdict" = ok ] || tail -n 5 "$dir/backup.err" >&2
    grep -h 'divergence at' "$dir/backup.err" | sed 's/^/    backup: /' >&2 || true
done
printf 'stock failover: %d of %d trials ok\n' "$passed" "$trials"
[ "$passed" = "$trials" ]
