#!/usr/bin/env bash
# scripts/demo-pair.sh: pull the primary's power under key/value clients and watch.
#
# Makes host A, host B and a client host on this machine (scripts/hosts.sh), runs the
# stock guest (booted once with its NIC and disks and snapshotted: scripts/
# stock-net-snapshot.sh, 10-25 minutes the first time) under a primary on A and a backup
# on B, has three clients on the client host append to the key/value service in the
# guest, cuts host A's cable and kills its VMM. The backup goes live; the clients finish
# over the connections they had; every append is checked to be in the store exactly once.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

stock_net_hosts ftvmdemo
python3 scripts/py/demo_pair.py "$ftvm" "$PWD/build/kv/bin/kvclient" "$hosts" "$work"
