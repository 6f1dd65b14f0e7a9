#!/usr/bin/env bash
# Events at kicks placed by breakpoint (`--place-events breakpoint`, the default) against
# shipped as checkpoint deltas (`--place-events delta`, the format before points), side by
# side in one run, each recorded and then replayed (every exit verified, digests compared):
#   boot:  the stock kernel booted from build/stock (vmlinux and initramfs) to its /init,
#          which powers the guest off (the README's "Log of a recorded stock boot");
#   stock: the stock kernel restored from SNAPSHOT, a shell loop with sleeps and console
#          output (the workload of scripts/bench-log-size.sh).
# The two modes of each workload run at the same time, one per core; replays too. Prints
# per mode: log bytes, guest seconds, record and replay wall time, kicks as points and as
# deltas (user mode, other), points reached, breakpoint hits stepped over, points missed,
# exits verified and skipped, divergences, whether the final digests match.
# Usage: scripts/bench-points.sh [WORKLOADS [SNAPSHOT_DIR]]  (WORKLOADS default "boot stock")
# FTVM_BIN=PATH uses that ftvm binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_base_tools
ensure_tools bc:bc
require_kvm
workloads=${1:-boot stock}
snap=${2:-build/stock/snapshot}
release_ftvm
guest-images/stock/build.sh >&2
trial_workspace ftvm-points "the logs and outputs"
modes=(delta breakpoint)

input() {
    case $1 in
        boot) printf '' ;;
        stock) printf 'for i in 1 2 3; do echo tick-$i; sleep 1; done; cat /proc/uptime; exit 0\n' ;;
    esac
}

# record_mode W MODE, replay_mode W MODE: record W in MODE; replay its log.
record_mode() {
    local w=$1 mode=$2 d=$work/$1-$2
    mkdir -p "$d"
    local t0; t0=$(date +%s%N)
    if [ "$w" = boot ]; then
        "$ftvm" record --place-events "$mode" --log "$d/log" --kernel build/stock/vmlinux \
            --initrd build/stock/initramfs.cpio --cmdline '-- devmem 0xd0000010 32 0; reboot -f' \
            </dev/null >"$d/rec.out" 2>"$d/rec.err" || true
    else
        input "$w" | "$ftvm" record --place-events "$mode" --log "$d/log" --restore "$snap" \
            >"$d/rec.out" 2>"$d/rec.err" || true
    fi
    echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$d/rec.ms"
}
replay_mode() {
    local w=$1 mode=$2 d=$work/$1-$2
    local t0; t0=$(date +%s%N)
    if [ "$w" = boot ]; then
        "$ftvm" replay --log "$d/log" --kernel build/stock/vmlinux --initrd build/stock/initramfs.cpio \
            --cmdline '-- devmem 0xd0000010 32 0; reboot -f' </dev/null >"$d/rep.out" 2>"$d/rep.err" || true
    else
        "$ftvm" replay --log "$d/log" --restore "$snap" </dev/null >"$d/rep.out" 2>"$d/rep.err" || true
    fi
    echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$d/rep.ms"
}

for w in $workloads; do
    if [ "$w" = stock ] && [ ! -f "$snap/manifest.json" ]; then
        log "no snapshot at $snap: skipping the stock workload"
        continue
    fi
    log "$w: recording with ${modes[*]} side by side"
    for m in "${modes[@]}"; do record_mode "$w" "$m" & pids+=($!); done
    wait
    log "$w: replaying both side by side"
    for m in "${modes[@]}"; do replay_mode "$w" "$m" & pids+=($!); done
    wait
done

num() { sed -n "$2" "$1" | head -n1; }
echo "machine: $(uname -n), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%d)"
printf '%-5s %-10s %11s %7s %7s %7s %6s %6s %6s %6s %6s %6s %9s %7s %9s %7s %5s %5s\n' \
    work mode log_bytes guest_s rec_s rep_s rep/rec points d_user d_per d_other reached stepped missed verified skipped diverg equal
for w in $workloads; do
    for m in "${modes[@]}"; do
        d=$work/$w-$m
        [ -f "$d/rec.err" ] || continue
        bytes=$(num "$d/rec.err" 's/^ftvm record: log \([0-9]*\) bytes;.*/\1/p')
        secs=$(num "$d/rec.err" 's/^ftvm record: log .* over \([0-9.]*\) s of guest time.*/\1/p')
        read -r placed duser dper dother <<<"$(num "$d/rec.err" 's/.*event points: placed \([0-9]*\), as deltas \([0-9]*\) in user mode, \([0-9]*\) periodic and \([0-9]*\) other.*/\1 \2 \3 \4/p')"
        read -r reached stepped missed <<<"$(num "$d/rep.err" 's/.*reached \([0-9]*\), hits stepped over \([0-9]*\), missed \([0-9]*\)).*/\1 \2 \3/p')"
        read -r verified skipped divs <<<"$(num "$d/rep.err" 's/^ftvm replay: \([0-9]*\) exits verified.* \([0-9]*\) divergences, \([0-9]*\) exits skipped.*/\1 \3 \2/p')"
        equal=$(grep -q 'matches the recording' "$d/rep.err" && echo yes || echo NO)
        rec_ms=$(cat "$d/rec.ms"); rep_ms=$(cat "$d/rep.ms")
        printf '%-5s %-10s %11s %7s %7.1f %7.1f %6.2f %6s %6s %6s %6s %6s %9s %7s %9s %7s %5s %5s\n' \
            "$w" "$m" "${bytes:-?}" "${secs:-?}" "$(echo "$rec_ms / 1000" | bc -l)" "$(echo "$rep_ms / 1000" | bc -l)" \
            "$(echo "$rep_ms / $rec_ms" | bc -l)" "${placed:-?}" "${duser:-?}" "${dper:-?}" "${dother:-?}" \
            "${reached:-?}" "${stepped:-?}" "${missed:-?}" "${verified:-?}" "${skipped:-?}" "${divs:-?}" "$equal"
    done
done
for w in $workloads; do
    for m in "${modes[@]}"; do
        d=$work/$w-$m
        [ -f "$d/rep.err" ] || continue
        grep -o 'divergence at exit [0-9]*: [^;]*' "$d/rep.err" | head -n 3 | sed "s/^/$w $m: /" || true
    done
done
echo "points: kicks logged as event points; d_user/d_per/d_other: kicks shipped as deltas (user"
echo "mode / the delta interval / other reasons); reached/stepped/missed: the replay's search."
