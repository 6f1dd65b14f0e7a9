#!/usr/bin/env bash
# Log size of checkpoint pages: the old format (`--page-encoding raw`, whole pages every
# time) against the page codec (`xor-lz4`, `xor-zstd`), side by side in one run on the same
# workloads, each recorded and then replayed (every exit verified, digests compared):
#   (a) tiny: the user-mode tiny guest (a CPL3 busy loop with the timer: kicked deltas),
#       ROUNDS recordings per encoding, interleaved, totals summed;
#   (b) stock: the stock kernel restored from SNAPSHOT, a shell loop with sleeps and
#       console output (as tests/tests/stock_kernel.rs records it), once per encoding;
#   (c) transfer: a primary restored from SNAPSHOT and a backup joining it: the state
#       transfer's pages and bytes, once per encoding.
# Prints log bytes, guest seconds, bytes per guest second and the ratio raw/encoding.
# Usage: scripts/bench-log-size.sh [SNAPSHOT_DIR [ROUNDS [ENCODINGS]]]
#   SNAPSHOT_DIR: a snapshot of the booted stock guest (default build/stock/snapshot;
#   "none" skips part b). ENCODINGS default "raw xor-lz4 xor-zstd".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_base_tools
ensure_tools bc:bc /usr/bin/time:time
require_kvm
snap=${1:-build/stock/snapshot}
rounds=${2:-5}
encodings=${3:-raw xor-lz4 xor-zstd}
cargo build --release --locked -q -p ftvm -p ftvm-test-guests
ftvm=target/release/ftvm
guest() { ls -t target/release/build/ftvm-test-guests-*/out/"$1".elf | head -n1; }
trial_workspace ftvm-logsize "the logs and outputs"

# field NAME FILE: a number from the `ftvm record:`/`ftvm replay:` summary lines.
rec_bytes() { sed -n 's/^ftvm record: log \([0-9]*\) bytes;.*/\1/p' "$1"; }
rec_secs() { sed -n 's/^ftvm record: log .* over \([0-9.]*\) s of guest time.*/\1/p' "$1"; }
rec_deltas() { sed -n 's/^ftvm record: log .* deltas \([0-9]*\) (\([0-9]*\) bytes, \([0-9]*\) pages).*/\1 \3/p' "$1"; }
verified() { sed -n 's/^ftvm replay: \([0-9]*\) exits verified.* \([0-9]*\) divergences.*/\1 \2/p' "$1"; }
matched() { grep -q 'matches the recording' "$1" && echo yes || echo NO; }

declare -A bytes secs deltas pages exits divs ok wall rss
record_and_replay() { # KEY ENC INPUT ARGS...
    local key=$1 enc=$2 input=$3; shift 3
    local t0 t1
    t0=$(date +%s%N)
    printf '%b' "$input" | /usr/bin/time -f %M -o "$work/rss" \
        "$ftvm" record --page-encoding "$enc" --log "$work/log" "$@" \
        >"$work/rec.out" 2>"$work/rec.err" || true
    t1=$(date +%s%N)
    "$ftvm" replay --log "$work/log" "$@" </dev/null >"$work/rep.out" 2>"$work/rep.err" || true
    local b s d p v x
    b=$(rec_bytes "$work/rec.err"); s=$(rec_secs "$work/rec.err")
    read -r d p <<<"$(rec_deltas "$work/rec.err")"
    read -r v x <<<"$(verified "$work/rep.err")"
    if [ -z "$b" ] || [ -z "$v" ]; then
        log "$key $enc: no summary; record and replay said:"; tail -n 3 "$work/rec.err" "$work/rep.err" >&2
        failed=1
        exit 1
    fi
    log "$key $enc: $b bytes over $s s of guest time, $v exits verified, $x divergences"
    bytes[$key,$enc]=$(( ${bytes[$key,$enc]:-0} + b ))
    secs[$key,$enc]=$(echo "${secs[$key,$enc]:-0} + $s" | bc -l)
    deltas[$key,$enc]=$(( ${deltas[$key,$enc]:-0} + d ))
    pages[$key,$enc]=$(( ${pages[$key,$enc]:-0} + p ))
    exits[$key,$enc]=$(( ${exits[$key,$enc]:-0} + v ))
    divs[$key,$enc]=$(( ${divs[$key,$enc]:-0} + x ))
    wall[$key,$enc]=$(( ${wall[$key,$enc]:-0} + (t1 - t0) / 1000000 ))
    local kb; kb=$(tail -n 1 "$work/rss")
    [ "$kb" -gt "${rss[$key,$enc]:-0}" ] && rss[$key,$enc]=$kb
    [ "$(matched "$work/rep.err")" = yes ] || ok[$key,$enc]=NO
    : "${ok[$key,$enc]:=yes}"
}

keys=(tiny)
for _ in $(seq "$rounds"); do
    for enc in $encodings; do
        record_and_replay tiny "$enc" "" --kernel "$(guest usermode)" --mem 16
    done
done
if [ "$snap" != none ]; then
    [ -f "$snap/manifest.json" ] || { log "no snapshot at $snap (give one, or 'none')"; exit 1; }
    keys+=(stock)
    loop='for i in 1 2 3; do echo tick-$i; sleep 1; done; cat /proc/uptime; exit 0\n'
    for enc in $encodings; do
        log "stock workload, $enc"
        record_and_replay stock "$enc" "$loop" --restore "$snap"
    done
fi

# transfer ENC: a pair from the snapshot; writes "pages bytes rounds" of its state transfer
# to $work/pair-ENC/result.
transfer() {
    local enc=$1 dir=$work/pair-$1 port=$((20000 + RANDOM % 20000))
    mkdir -p "$dir/shared"
    "$ftvm" keygen "$dir/pair.key" 2>/dev/null
    mkfifo "$dir/stdin"
    "$ftvm" primary --shared-dir "$dir/shared" --name bench --key-file "$dir/pair.key" \
        --listen "127.0.0.1:$port" --page-encoding "$enc" --restore "$snap" \
        <"$dir/stdin" >/dev/null 2>"$dir/primary.err" &
    local primary=$!; pids+=("$primary")
    exec 7>"$dir/stdin" # the primary's console input stays open (and empty)
    wait_for "$dir/primary.err" "waiting for a backup" 60 || { failed=1; log "transfer $enc: no primary"; exit 1; }
    "$ftvm" backup --shared-dir "$dir/shared" --name bench --key-file "$dir/pair.key" \
        --primary "127.0.0.1:$port" </dev/null >/dev/null 2>"$dir/backup.err" &
    local backup=$!; pids+=("$backup")
    wait_for "$dir/primary.err" "protected:" 300 || { failed=1; log "transfer $enc: never protected"; exit 1; }
    kill -9 "$primary" "$backup" 2>/dev/null || true
    wait "$primary" "$backup" 2>/dev/null || true
    exec 7>&-
    sed -n 's/.*protected: \([0-9]*\) pages (\([0-9]*\) bytes sent) in \([0-9]*\) rounds.*/\1 \2 \3/p' "$dir/primary.err" >"$dir/result"
}
declare -A tpages tbytes trounds
if [ "$snap" != none ]; then
    for enc in $encodings; do
        log "state transfer, $enc"
        transfer "$enc"
        read -r tpages[$enc] tbytes[$enc] trounds[$enc] <"$work/pair-$enc/result"
    done
fi

echo "machine: $(uname -n), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%d)"
printf '%-6s %-9s %12s %8s %12s %7s %7s %8s %7s %9s %6s %5s %10s\n' \
    workload encoding log_bytes guest_s bytes/s deltas pages rec_ms rec_MiB verified diverg equal raw/this
for key in "${keys[@]}"; do
    first=${encodings%% *}
    base=$(echo "${bytes[$key,$first]} / ${secs[$key,$first]}" | bc -l)
    for enc in $encodings; do
        rate=$(echo "${bytes[$key,$enc]} / ${secs[$key,$enc]}" | bc -l)
        printf '%-6s %-9s %12d %8.2f %12.0f %7d %7d %8d %7d %9d %6d %5s %10.1f\n' \
            "$key" "$enc" "${bytes[$key,$enc]}" "${secs[$key,$enc]}" "$rate" \
            "${deltas[$key,$enc]}" "${pages[$key,$enc]}" "${wall[$key,$enc]}" \
            "$(( ${rss[$key,$enc]} / 1024 ))" \
            "${exits[$key,$enc]}" "${divs[$key,$enc]}" "${ok[$key,$enc]}" \
            "$(echo "$base / $rate" | bc -l)"
    done
done
if [ "$snap" != none ]; then
    printf '\n%-9s %8s %7s %12s %10s\n' encoding pages rounds bytes raw/this
    for enc in $encodings; do
        printf '%-9s %8d %7d %12d %10.1f\n' "$enc" "${tpages[$enc]}" "${trounds[$enc]}" "${tbytes[$enc]}" \
            "$(echo "${tbytes[$first]} / ${tbytes[$enc]}" | bc -l)"
    done
fi
echo "raw/this: bytes per second of guest time of the first encoding ($first) over this one's;"
echo "rec_MiB: the recorder's peak RSS (guest memory touched, plus the page codec's copy)."
echo "transfer bytes: the page messages of the state transfer (encoded pages and framing)."
