#!/usr/bin/env bash
# scripts/bench-io.sh [ROUNDS]
#
# The stock guest's network and disk under `run` and under `record`, side by side in one
# run (issue 10): ping round trip from the client host, TCP throughput host to guest and
# guest to host (1 MiB through busybox nc), disk write (4 MiB, fsync) and cold-cache read
# on its ext4 data disk. Each round restores the stock snapshot with a NIC and disks
# (scripts/stock-net-snapshot.sh, booted once and cached) on simulated host A
# (scripts/hosts.sh); rounds alternate run and record. Prints medians and record/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

rounds=${1:-3}
case $rounds in '' | *[!0-9]* | 0) log "ROUNDS must be a positive number, not '$rounds'"; exit 2 ;; esac
stock_net_hosts ftvmbio
echo "machine: $(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%F)"
python3 scripts/py/bench_io.py "$ftvm" "$hosts" "$work" "$rounds"
