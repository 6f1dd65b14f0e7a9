#!/usr/bin/env bash
# Cost of recording and replaying, measured side by side in one run: for each tiny guest,
# the median wall time of `run`, `record` and `replay` over N rounds (interleaved, so the
# machine's state affects all three alike), their ratios, and the log size.
# Usage: scripts/bench-record-replay.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_base_tools
ensure_tools bc:bc
require_kvm
rounds=${1:-7}
cargo build --release --locked -q -p ftvm -p ftvm-test-guests
ftvm=target/release/ftvm
guest() { ls -t target/release/build/ftvm-test-guests-*/out/"$1".elf | head -n1; }
log=$(mktemp /tmp/ftvm-bench-XXXXXX.log)
trap 'rm -f "$log"' EXIT

# ms COMMAND...: wall time of one command in milliseconds.
ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" </dev/null >/dev/null 2>&1
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
}

printf '%-10s %8s %8s %8s %8s %8s %10s\n' guest run_ms rec_ms rep_ms rec/run rep/run log_bytes
for g in timer io usermode syscall; do
    k=$(guest "$g")
    runs=(); recs=(); reps=()
    for _ in $(seq "$rounds"); do
        runs+=("$(ms "$ftvm" run --kernel "$k" --mem 16)")
        recs+=("$(ms "$ftvm" record --log "$log" --kernel "$k" --mem 16)")
        reps+=("$(ms "$ftvm" replay --log "$log" --kernel "$k" --mem 16)")
    done
    r=$(printf '%s\n' "${runs[@]}" | median)
    c=$(printf '%s\n' "${recs[@]}" | median)
    p=$(printf '%s\n' "${reps[@]}" | median)
    size=$(stat -c %s "$log")
    printf '%-10s %8d %8d %8d %8.2f %8.2f %10d\n' "$g" "$r" "$c" "$p" \
        "$(echo "$c / $r" | bc -l)" "$(echo "$p / $r" | bc -l)" "$size"
done
