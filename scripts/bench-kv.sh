#!/usr/bin/env bash
# scripts/bench-kv.sh [ROUNDS] [OPS]
#
# Row (c) of the benchmark (issue 13): the key/value service in the stock guest, restored
# from its snapshot with a NIC (scripts/stock-net-snapshot.sh, booted once and cached),
# serving `kvclient bench` (OPS operations, a put then a get of its key, alternating, each
# checked) from the client host of scripts/hosts.sh: under `run` on host A, and under a
# primary on host A with its backup on host B (the output rule on every reply). Prints
# operations per second, latency p50/p99, and log bytes per operation under the pair.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

rounds=${1:-3}
ops=${2:-200}
for n in "$rounds" "$ops"; do
    case $n in '' | *[!0-9]* | 0) log "counts must be positive numbers, not '$n'"; exit 2 ;; esac
done
stock_net_hosts ftvmbkv
echo "machine: $(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%F)"
python3 scripts/py/bench_kv.py "$ftvm" "$PWD/build/kv/bin/kvclient" "$hosts" "$work" "$rounds" "$ops"
