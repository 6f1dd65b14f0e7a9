#!/usr/bin/env bash
# What fault tolerance costs, measured side by side in one run (issue 13), on tiny guests:
#
#   (a) guest progress per second of a CPU-bound user-mode loop (`spin`, 1e9 iterations)
#       under `run`, `record` and a primary with its backup;
#   (b) console throughput (`chatter`, 5,000 unpaced lines) under the same three;
#   (d) log bandwidth, idle (`counter`, mostly halted) and busy (`spin`);
#   (e) the output rule's delay on console bytes (the primary's own figures);
#   (f) failover seen by silence on simulated hosts (scripts/hosts.sh): host A's cable is
#       cut, then its VMM SIGKILLed; the client-visible stall (longest time the console
#       stream stood still around the cut) and cut-to-live, median and worst of N;
#   (g) the state transfer of the pair runs (pages, rounds, pause).
#
# (c), key/value operations from the client host, is scripts/bench-kv.sh (the stock guest).
#
# Usage: scripts/bench.sh [ROUNDS] [FAILOVERS]   (defaults 3 and 10; under 15 minutes)
# Needs root (network namespaces) and /dev/kvm. Prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

rounds=${1:-3}
failovers=${2:-10}
for n in "$rounds" "$failovers"; do
    case $n in '' | *[!0-9]* | 0) log "counts must be positive numbers, not '$n'"; exit 2 ;; esac
done
ensure_base_tools
ensure_tools bc:bc ip:iproute2 python3:python3
require_kvm
log "building ftvm and the tiny guests (release)"
cargo build --release --locked -q -p ftvm -p ftvm-test-guests
ftvm=$PWD/target/release/ftvm
guest() { ls -t target/release/build/ftvm-test-guests-*/out/"$1".elf | head -n1; }
trial_workspace ftvm-bench "the benchmark's files"
hosts=bench$$
trap 'scripts/hosts.sh down "$hosts" >/dev/null 2>&1 || true; trial_workspace_cleanup' EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
maxof() { sort -n | tail -n1; }

# One guest under `run`: wall ms.
run_once() {
    local t0
    t0=$(now_ms)
    "$ftvm" run --kernel "$(guest "$1")" --mem 16 </dev/null >"$work/run.out" 2>/dev/null
    echo $(($(now_ms) - t0))
}

# One guest under `record`: "wall_ms log_bytes".
record_once() {
    local t0 ms
    t0=$(now_ms)
    "$ftvm" record --log "$work/rec.log" --kernel "$(guest "$1")" --mem 16 </dev/null >/dev/null 2>&1
    ms=$(($(now_ms) - t0))
    echo "$ms $(stat -c %s "$work/rec.log")"
}

# One guest under a primary and a backup on loopback: "primary_wall_ms log_bytes
# delay_avg delay_max" and the primary's stderr in $work/pair/primary.err.
pair_once() {
    local dir=$work/pair port t0 p b ms
    rm -rf "$dir"
    mkdir -p "$dir/shared"
    "$ftvm" keygen "$dir/key" 2>/dev/null
    port=$((20000 + RANDOM % 20000))
    t0=$(now_ms)
    "$ftvm" primary --shared-dir "$dir/shared" --name g --key-file "$dir/key" \
        --listen "127.0.0.1:$port" --kernel "$(guest "$1")" --mem 16 \
        </dev/null >/dev/null 2>"$dir/primary.err" &
    p=$!
    wait_for "$dir/primary.err" "waiting for a backup" 30
    "$ftvm" backup --shared-dir "$dir/shared" --name g --key-file "$dir/key" \
        --primary "127.0.0.1:$port" </dev/null >/dev/null 2>"$dir/backup.err" &
    b=$!
    wait "$p" || true
    ms=$(($(now_ms) - t0))
    wait "$b" || true
    local delays
    delays=$(sed -n 's/.*delay avg \([0-9.]*\) ms, max \([0-9.]*\) ms.*/\1 \2/p' "$dir/primary.err" | tail -n1)
    local logged p99
    logged=$(sed -n 's/^ftvm record: log \([0-9]*\) bytes.*/\1/p' "$dir/primary.err" | tail -n1)
    p99=$(delay_p99 "$dir/shared/g.$(hostname)-$p.status")
    echo "$ms ${logged:-0} ${delays:-nan nan} $p99"
    cp "$dir/primary.err" "$work/pair-$1.err"
}

# delay_p99 STATUS_FILE: the bucket bound (ms) under which 99% of the primary's released
# output waited, from its last status report's histogram (ft_log::output::DELAY_BOUNDS_NS).
delay_p99() {
    python3 - "$1" <<'EOF'
import json, sys
bounds_ms = [0, 0.1, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 1000, 10000]
try:
    counts = json.load(open(sys.argv[1])).get("output_delay_buckets", [])
except (OSError, ValueError):
    counts = []
total, seen = sum(counts), 0
for i, c in enumerate(counts):
    seen += c
    if total and seen >= 0.99 * total:
        print(bounds_ms[i] if i < len(bounds_ms) else "inf")
        break
else:
    print("nan")
EOF
}

declare -A run_ms rec_ms pair_ms rec_log pair_log delay_avg delay_max delay_p99
for g in spin chatter counter; do
    log "measuring $g: run, record and pair, $rounds rounds each (interleaved)"
    r=(); c=(); p=(); cl=(); pl=(); da=(); dm=(); d99=()
    for _ in $(seq "$rounds"); do
        r+=("$(run_once "$g")")
        read -r ms bytes < <(record_once "$g")
        c+=("$ms"); cl+=("$bytes")
        read -r ms bytes avg max p99 < <(pair_once "$g")
        p+=("$ms"); pl+=("$bytes"); da+=("$avg"); dm+=("$max"); d99+=("$p99")
    done
    run_ms[$g]=$(printf '%s\n' "${r[@]}" | median)
    rec_ms[$g]=$(printf '%s\n' "${c[@]}" | median)
    pair_ms[$g]=$(printf '%s\n' "${p[@]}" | median)
    rec_log[$g]=$(printf '%s\n' "${cl[@]}" | median)
    pair_log[$g]=$(printf '%s\n' "${pl[@]}" | median)
    delay_avg[$g]=$(printf '%s\n' "${da[@]}" | median)
    delay_max[$g]=$(printf '%s\n' "${dm[@]}" | maxof)
    delay_p99[$g]=$(printf '%s\n' "${d99[@]}" | maxof)
done
console_bytes=$("$ftvm" run --kernel "$(guest chatter)" --mem 16 </dev/null 2>/dev/null | wc -c)

# (f) Failover on simulated hosts, seen by silence.
log "failover: $failovers trials on simulated hosts (cable cut, then SIGKILL)"
scripts/hosts.sh up "$hosts" >/dev/null
stalls=(); lives=()
for ((i = 1; i <= failovers; i++)); do
    shared=/tmp/$hosts/shared
    rm -rf "$shared"/*
    key=/tmp/$hosts/key
    [ -f "$key" ] || "$ftvm" keygen "$key" 2>/dev/null
    scripts/hosts.sh heal a "$hosts"
    # The files are made afresh before the VMMs start: a background job's redirection
    # happens later, and the last trial's lines must not be mistaken for this one's.
    rm -f "$work/fo-primary.err" "$work/fo-backup.err"
    ip netns exec "$hosts-a" "$ftvm" primary --shared-dir "$shared" --name counter --key-file "$key" \
        --listen 10.77.0.1:7000 --peer-timeout 300 --kernel "$(guest counter)" --mem 16 \
        </dev/null >/dev/null 2>"$work/fo-primary.err" &
    p=$!
    pids+=("$p")
    wait_for "$work/fo-primary.err" "waiting for a backup" 30
    ip netns exec "$hosts-b" "$ftvm" backup --shared-dir "$shared" --name counter --key-file "$key" \
        --primary 10.77.0.1:7000 --peer-timeout 300 </dev/null >/dev/null 2>"$work/fo-backup.err" &
    b=$!
    pids+=("$b")
    wait_for "$work/fo-primary.err" "protected:" 30
    sleep "0.$((300 + RANDOM % 600))"
    scripts/hosts.sh cut a "$hosts"
    cut=$(now_ms)
    { kill -9 "$p" && wait "$p"; } 2>/dev/null || true
    # Watch the stream: the longest time it stood still from the cut on, and when the
    # backup said it was live.
    size=$(stat -c %s "$shared/counter.console")
    grew=$cut
    stall=0
    live=
    while kill -0 "$b" 2>/dev/null; do
        t=$(now_ms)
        s=$(stat -c %s "$shared/counter.console")
        if [ "$s" -gt "$size" ]; then
            [ $((t - grew)) -gt "$stall" ] && stall=$((t - grew))
            size=$s
            grew=$t
        fi
        [ -z "$live" ] && grep -q "live at exit" "$work/fo-backup.err" && live=$((t - cut))
        sleep 0.002
    done
    wait "$b" || true
    if [ -z "$live" ]; then
        # Not a failover (the guest may have finished first): keep its files.
        failed=$((failed + 1))
        cp "$work/fo-primary.err" "$work/fo-$i-primary.err"
        cp "$work/fo-backup.err" "$work/fo-$i-backup.err"
        cp "$shared/counter.console" "$work/fo-$i.console" 2>/dev/null || true
        log "failover trial $i: the backup never went live (files kept)"
        continue
    fi
    stalls+=("$stall")
    lives+=("$live")
done
scripts/hosts.sh down "$hosts" >/dev/null

ratio() { echo "scale=2; $1 / $2" | bc -l; }
rate() { echo "scale=1; $1 * 1000 / $2" | bc -l; }
mbit() { echo "scale=2; $1 * 8 / $2 / 1000" | bc -l; }
machine="$(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1), $(uname -r)"
read -r tpages trounds tpause < <(sed -n 's/.*protected: \([0-9]*\) pages.* in \([0-9]*\) rounds, paused \([0-9.]*\) ms.*/\1 \2 \3/p' "$work/pair-spin.err" | tail -n1)

printf '\nftvm benchmark, %s, on %s (medians of %d rounds)\n\n' "$(date -u +%Y-%m-%d)" "$machine" "$rounds"
printf '%-44s %12s %12s %12s %9s %9s\n' measure run record pair rec/run pair/run
printf '%-44s %12s %12s %12s %9s %9s\n' "(a) spin: guest loop, M iterations/s" \
    "$(rate 1000 "${run_ms[spin]}")" "$(rate 1000 "${rec_ms[spin]}")" "$(rate 1000 "${pair_ms[spin]}")" \
    "$(ratio "${run_ms[spin]}" "${rec_ms[spin]}")" "$(ratio "${run_ms[spin]}" "${pair_ms[spin]}")"
printf '%-44s %12s %12s %12s %9s %9s\n' "(b) chatter: console, KB/s" \
    "$(rate "$console_bytes" "${run_ms[chatter]}" | awk '{printf "%.1f", $1/1000}')" \
    "$(rate "$console_bytes" "${rec_ms[chatter]}" | awk '{printf "%.1f", $1/1000}')" \
    "$(rate "$console_bytes" "${pair_ms[chatter]}" | awk '{printf "%.1f", $1/1000}')" \
    "$(ratio "${run_ms[chatter]}" "${rec_ms[chatter]}")" "$(ratio "${run_ms[chatter]}" "${pair_ms[chatter]}")"
printf '%-44s %12s %12s %12s\n' "    wall ms: spin / chatter / counter" \
    "${run_ms[spin]}/${run_ms[chatter]}/${run_ms[counter]}" \
    "${rec_ms[spin]}/${rec_ms[chatter]}/${rec_ms[counter]}" \
    "${pair_ms[spin]}/${pair_ms[chatter]}/${pair_ms[counter]}"
printf '%-44s %12s %12s %12s\n' "(d) log Mbit/s idle (counter)" - \
    "$(mbit "${rec_log[counter]}" "${rec_ms[counter]}")" "$(mbit "${pair_log[counter]}" "${pair_ms[counter]}")"
printf '%-44s %12s %12s %12s\n' "    log Mbit/s busy (spin)" - \
    "$(mbit "${rec_log[spin]}" "${rec_ms[spin]}")" "$(mbit "${pair_log[spin]}" "${pair_ms[spin]}")"
printf '%-44s %12s %12s %12s\n' "    log Mbit/s console (chatter)" - \
    "$(mbit "${rec_log[chatter]}" "${rec_ms[chatter]}")" "$(mbit "${pair_log[chatter]}" "${pair_ms[chatter]}")"
printf '%-44s %12s %12s %12s\n' "(e) output delay ms avg/p99<=/max: counter" - - "${delay_avg[counter]}/${delay_p99[counter]}/${delay_max[counter]}"
printf '%-44s %12s %12s %12s\n' "    output delay ms avg/p99<=/max: chatter" - - "${delay_avg[chatter]}/${delay_p99[chatter]}/${delay_max[chatter]}"
printf '%-44s %s\n' "(f) failover by silence, $failovers trials" \
    "stall median $(printf '%s\n' "${stalls[@]}" | median) ms, worst $(printf '%s\n' "${stalls[@]}" | maxof) ms; cut-to-live median $(printf '%s\n' "${lives[@]}" | median) ms, worst $(printf '%s\n' "${lives[@]}" | maxof) ms (peer timeout 300 ms)"
printf '%-44s %s\n' "(g) state transfer (spin, 16 MiB guest)" \
    "${tpages:-?} pages in ${trounds:-?} rounds, guest paused ${tpause:-?} ms"
printf '%-44s %s\n' "(c) key/value ops from the client host" "in scripts/bench-kv.sh (the stock guest with its NIC; about 15 minutes)"
