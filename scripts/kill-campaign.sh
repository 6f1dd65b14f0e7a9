#!/usr/bin/env bash
# Pull the plug again and again: the counter tiny guest under a primary and a backup,
# with one fault per trial at a random moment, and the observer's console stream checked
# every time.
#
#   scripts/kill-campaign.sh [COUNTER_TRIALS] [STOCK_TRIALS]
#
# Faults, chosen per trial: SIGKILL to the primary (7 in 10), SIGKILL to the backup
# (1.5 in 10), or the primary frozen with SIGSTOP (its channel and heartbeats go silent,
# as in a partition) and thawed once the backup has gone live (1.5 in 10). Every trial
# requires: the console stream shows "count 0".."count 1000" each exactly once, in order,
# between the banners; exactly one VMM finishes the guest (status 0) and a thawed primary
# halts (status 5, it lost the test-and-set) without writing to the stream; exactly one
# owner file per epoch. A failed trial's files are kept. STOCK_TRIALS (default 0) then
# runs scripts/stock-failover.sh with that many stock-kernel trials.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

trials=${1:-100}
stock_trials=${2:-0}
for n in "$trials" "$stock_trials"; do
    case $n in '' | *[!0-9]*) log "trial counts must be numbers, not '$n'"; exit 2 ;; esac
done

ensure_base_tools
require_kvm
log "building ftvm and the tiny guests (release)"
cargo build --release --locked -p ftvm -p ftvm-test-guests
ftvm=$PWD/target/release/ftvm
counter=$(ls -t target/release/build/ftvm-test-guests-*/out/counter.elf | head -n1)

trial_workspace ftvm-kill-campaign "the failed trials' files"

# check_stream FILE [prefix]: every count once, in order, between the banners; prints the
# verdict. With "prefix" the stream may stop early (no VMM finished the guest) but must
# still have no count twice or out of order.
check_stream() {
    awk -v prefix="${2:-}" '
        $0 == "counter: start" { starts++; next }
        $0 == "counter: done" { dones++; next }
        /^count [0-9]+$/ { if ($2 != next_n) { print "count " next_n " expected, got " $0; bad = 1; exit } next_n++; next }
        { print "unexpected line: " $0; bad = 1; exit }
        END {
            if (bad) exit 1
            if (prefix != "" && starts <= 1 && dones == 0) { print "prefix"; exit }
            if (starts != 1 || dones != 1 || next_n != 1001) { print "incomplete: " next_n " counts, " starts " starts, " dones " dones"; exit 1 }
            print "complete"
        }' "$1"
}

# finish PID SECONDS: wait for PID (killing it after SECONDS); its status in $status
# (not a subshell: only this shell can wait for its children).
finish() {
    if timeout "$2" tail --pid="$1" -f /dev/null; then
        status=0
        wait "$1" 2>/dev/null || status=$?
    else
        kill -9 "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
        status=hung
    fi
}

live_ms=()
passed=0
declare -A faults=([kill-primary]=0 [kill-backup]=0 [freeze-primary]=0)
# Trials where the primary declared its backup lost before the fault (a starved backup on
# a loaded host), went on alone and was then killed: the split rule must make the backup
# halt (status 5) without writing, and the stream stops early. Counted, not failed.
split_before=0
for ((trial = 1; trial <= trials; trial++)); do
    dir=$work/$trial
    mkdir -p "$dir/shared"
    "$ftvm" keygen "$dir/pair.key" 2>/dev/null
    port=$((20000 + RANDOM % 20000))
    roll=$((RANDOM % 20))
    if [ $roll -lt 14 ]; then fault=kill-primary; elif [ $roll -lt 17 ]; then fault=kill-backup; else fault=freeze-primary; fi
    faults[$fault]=$((faults[$fault] + 1))
    delay_ms=$((RANDOM % 3000))
    "$ftvm" primary --shared-dir "$dir/shared" --name counter --key-file "$dir/pair.key" --listen "127.0.0.1:$port" \
        --peer-timeout 300 --kernel "$counter" --mem 16 </dev/null >/dev/null 2>"$dir/primary.err" &
    primary=$!
    pids+=("$primary")
    wait_for "$dir/primary.err" "waiting for a backup" 30 || { log "trial $trial: the primary did not start"; cat "$dir/primary.err" >&2; failed=1; exit 1; }
    "$ftvm" backup --shared-dir "$dir/shared" --name counter --key-file "$dir/pair.key" --primary "127.0.0.1:$port" \
        --peer-timeout 300 </dev/null >/dev/null 2>"$dir/backup.err" &
    backup=$!
    pids+=("$backup")
    wait_for "$dir/primary.err" "protected:" 30 || true
    sleep "$(printf '0.%03d' "$delay_ms")"
    expect_primary=0
    expect_backup=0
    case $fault in
        kill-primary) kill -9 "$primary" 2>/dev/null || true; expect_primary=killed ;;
        kill-backup) kill -9 "$backup" 2>/dev/null || true; expect_backup=killed ;;
        freeze-primary)
            kill -STOP "$primary" 2>/dev/null || true
            # Thaw it once the backup has gone live (or finished).
            for ((i = 0; i < 100; i++)); do
                grep -q "live at exit" "$dir/backup.err" 2>/dev/null && break
                kill -0 "$backup" 2>/dev/null || break
                sleep 0.1
            done
            kill -CONT "$primary" 2>/dev/null || true
            expect_primary=5
            ;;
    esac
    finish "$backup" 60
    status_backup=$status
    finish "$primary" 60
    status_primary=$status
    [ "$expect_primary" = killed ] && status_primary=killed
    [ "$expect_backup" = killed ] && status_backup=killed
    split=no
    if [ "$fault" = kill-primary ] && { grep -q "went on alone" "$dir/primary.err" ||
        grep -q "lost the test-and-set for epoch 2 to primary pid $primary" "$dir/backup.err"; }; then
        split=yes
    fi
    if [ $split = yes ]; then
        stream=$(check_stream "$dir/shared/counter.console" prefix || true)
        [ "$stream" = prefix ] && stream=complete
    else
        stream=$(check_stream "$dir/shared/counter.console" || true)
    fi
    owners=$(ls "$dir/shared" | grep -c '\.owner$' || true)
    epochs=$(ls "$dir/shared" | sed -n 's/^counter\.epoch-\([0-9]*\)\.owner$/\1/p' | sort -n | uniq | wc -l)
    ok=yes
    [ "$stream" = complete ] || ok=no
    [ "$owners" = "$epochs" ] || ok=no
    case $fault in
        kill-primary)
            if [ $split = yes ]; then
                [ "$status_backup" = 5 ] && ! grep -q "live at exit" "$dir/backup.err" || ok=no
            else
                [ "$status_backup" = 0 ] || ok=no
            fi
            ;;
        kill-backup) [ "$status_primary" = 0 ] || ok=no ;;
        freeze-primary)
            # Either the backup went live and the thawed primary halted, or the guest had
            # already finished before the freeze.
            if grep -q "live at exit" "$dir/backup.err"; then
                [ "$status_backup" = 0 ] && [ "$status_primary" = 5 ] || ok=no
            else
                [ "$status_primary" = 0 ] || [ "$status_backup" = 0 ] || ok=no
            fi
            ;;
    esac
    ms=$(grep -o 'live at exit [0-9]* [0-9]* ms' "$dir/backup.err" | awk '{print $5}' || true)
    [ -n "$ms" ] && live_ms+=("$ms")
    if [ $ok = yes ]; then
        passed=$((passed + 1))
        [ $split = yes ] && split_before=$((split_before + 1))
    else
        failed=$((failed + 1))
        printf 'trial %d: FAILED: %s after %d ms; stream: %s; primary %s, backup %s; %d owner files for %d epochs\n' \
            "$trial" "$fault" "$delay_ms" "$stream" "$status_primary" "$status_backup" "$owners" "$epochs"
        continue
    fi
    rm -rf "$dir"
    [ $((trial % 10)) = 0 ] && log "$trial of $trials trials, $passed ok"
done

summary=$(printf '%s\n' "${live_ms[@]}" | sort -n | awk '
    { v[NR] = $1 }
    END { if (NR == 0) { print "no go-live measured"; exit }
          p90 = int(NR * 0.9 + 0.5); if (p90 < 1) p90 = 1
          printf "go-live after the loss was detected: n=%d median %d ms, p90 %d ms, max %d ms", NR, v[int((NR + 1) / 2)], v[p90], v[NR] }')
printf 'counter guest: %d of %d trials ok (kill primary %d, kill backup %d, freeze primary %d; %d primaries had gone on alone before the kill); %s\n' \
    "$passed" "$trials" "${faults[kill-primary]}" "${faults[kill-backup]}" "${faults[freeze-primary]}" "$split_before" "$summary"
if [ "$stock_trials" -gt 0 ]; then
    scripts/stock-failover.sh "$stock_trials"
fi
[ "$passed" = "$trials" ]
