#!/usr/bin/env bash
# Received-frame latency of the virtio-net path, `run` against `record`, side by side in
# one run: for each round (interleaved, so the machine's state affects both alike) the
# tiny `virtio-net` guest (HLT idle) and `virtio-net-spin` (no exits while it waits: its
# frames come at kicks) each echo 8 frames sent one at a time from a packet socket on a
# TAP made for the run; the host times each frame to its echo. Prints the median round
# trip per mode and guest and the record/run ratio. The tiny guests run at CPL0, which
# this host emulates (HOST-KVM.md), so the figures include the guest's own slow copying.
# Needs root (TAP, packet socket) and python3.
# Usage: scripts/bench-net.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_base_tools
ensure_tools python3:python3 ip:iproute2 bc:bc
require_kvm
rounds=${1:-5}
cargo build --release --locked -q -p ftvm -p ftvm-test-guests
ftvm=target/release/ftvm
guest() { ls -t target/release/build/ftvm-test-guests-*/out/"$1".elf | head -n1; }
tap="ftvb$$"
tap=${tap:0:15}
work=$(mktemp -d /tmp/ftvm-bench-net-XXXXXX)
ip tuntap add dev "$tap" mode tap
trap 'ip link del "$tap" 2>/dev/null || true; rm -rf "$work"' EXIT
echo 1 > "/proc/sys/net/ipv6/conf/$tap/disable_ipv6" 2>/dev/null || true
ip link set "$tap" up

# rtts: wait for a VMM on the TAP, then print the round trip (us) of 8 frames, one at a time.
rtts() {
    python3 - "$tap" <<'PY'
import socket, sys, time
tap = sys.argv[1]
deadline = time.time() + 20
while open(f"/sys/class/net/{tap}/carrier").read().strip() != "1":
    if time.time() > deadline: sys.exit("no VMM attached")
    time.sleep(0.01)
time.sleep(0.5)  # the guest posts its buffers and waits
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind((tap, 0)); s.settimeout(20)
guest = bytes.fromhex("525400123456"); me = bytes.fromhex("02aabbccdd01")
for i in range(8):
    f = guest + me + b"\x88\xb5" + bytes([i]) * 46
    t = time.perf_counter(); s.send(f); s.recv(4096)
    print(int((time.perf_counter() - t) * 1e6))
PY
}

# round GUEST MODE: one VMM run, its 8 round trips appended to $work/GUEST.MODE.
round() {
    local k extra=()
    k=$(guest "$1")
    [ "$2" = record ] && extra=(--log "$work/log")
    "$ftvm" "$2" "${extra[@]}" --kernel "$k" --mem 16 --net "tap=$tap" </dev/null >/dev/null 2>&1 &
    local pid=$!
    rtts >> "$work/$1.$2"
    wait "$pid"
}

for _ in $(seq "$rounds"); do
    for g in virtio-net virtio-net-spin; do
        round "$g" run
        round "$g" record
    done
done
printf '%-16s %12s %12s %10s\n' guest run_rtt_us rec_rtt_us rec/run
for g in virtio-net virtio-net-spin; do
    r=$(median < "$work/$g.run")
    c=$(median < "$work/$g.record")
    printf '%-16s %12d %12d %10.2f\n' "$g" "$r" "$c" "$(echo "$c / $r" | bc -l)"
done
