#!/usr/bin/env bash
# The stock kernel's boot under two or more sets of settings, side by side in one run (two
# at a time, one per core): build/stock's vmlinux and initramfs booted by `ftvm run` until
# its /init powers the guest off. Prints per variant the host seconds to the kernel's "Run
# /init as init process", to /init's "ftvm-init: ready" and to the VMM's exit, the
# interrupts delivered (and of them at kicks), the kicks, and each time as a ratio to the
# first variant's.
# Usage: scripts/bench-boot.sh [NAME=FTVM-ARGS[|KERNEL-PARAMS] ...]
#   default: "before=$BEFORE" "after=" where BEFORE is the settings of 2026-12-03: the live
#   5 ms event bound from the start, no random seed, and the default kernel command line
#   of then (without today's initcall_blacklist); "after" is ftvm's defaults.
#   KERNEL-PARAMS are appended to ftvm's default kernel command line (or are the whole
#   line after --no-default-cmdline), e.g. "lean=|init_on_alloc=0".
# FTVM_BIN=PATH uses that ftvm binary instead of building one; FTVM_PROFILE=1 also writes
# a --profile of each boot (symbols from FTVM_SYMBOLS if set) into the kept workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_base_tools
ensure_tools bc:bc python3:python3
require_kvm
# ftvm's default kernel command line until 2026-12-03 (vmm/src/linux.rs then).
OLD_CMDLINE="console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 nokaslr acpi=off pci=off nolapic noapic \
no_timer_check mitigations=off cryptomgr.notests lpj=5000 io_delay=none norandmaps \
randomize_kstack_offset=off no-kvmclock no-kvmapf no-steal-acc tsc=unstable noxsave \
clearcpuid=tsc,smap,smep,fsgsbase,pcid,invpcid,rdrand,rdseed,popcnt,rdtscp,serialize,clflushopt,rdpid,cx16,ssse3,sse4_1,sse4_2,pclmulqdq"
BEFORE="--boot-event-bound-ms 0 --no-boot-seed --no-default-cmdline|$OLD_CMDLINE"
if [ $# -eq 0 ]; then
    set -- "before=$BEFORE" "after="
fi
release_ftvm
guest-images/stock/build.sh >&2
trial_workspace ftvm-boot "the boots' outputs"
[ -n "${FTVM_PROFILE:-}" ] && failed=keep

# stamp FILE: copy stdin to FILE, each line prefixed with the seconds since the start.
stamp() {
    python3 -u -c '
import sys, time
t0 = time.monotonic()
with open(sys.argv[1], "w") as out:
    for line in sys.stdin.buffer:
        out.write("%.1f %s\n" % (time.monotonic() - t0, line.decode("utf-8", "replace").rstrip("\n")))
        out.flush()
' "$1"
}

# boot NAME ARGS: one boot, its console stamped into $work/NAME.out.
boot() {
    local name=$1 args=${2%%|*} params= prof=()
    [ "$args" != "$2" ] && params=${2#*|}
    [ -n "${FTVM_PROFILE:-}" ] && prof=(--profile "$work/$name.profile" ${FTVM_SYMBOLS:+--profile-symbols "$FTVM_SYMBOLS"})
    local t0; t0=$(date +%s%N)
    eval "set -- $args"
    "$ftvm" run --kernel build/stock/vmlinux --initrd build/stock/initramfs.cpio "${prof[@]}" "$@" \
        --cmdline "$params -- devmem 0xd0000010 32 0; reboot -f" </dev/null 2>"$work/$name.err" \
        | stamp "$work/$name.out" || true
    echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$work/$name.ms"
}

names=()
declare -A args_of
for v in "$@"; do
    names+=("${v%%=*}")
    args_of[${v%%=*}]=${v#*=}
done
for ((i = 0; i < ${#names[@]}; i += 2)); do
    batch=("${names[@]:i:2}")
    log "booting ${batch[*]} side by side (minutes each)"
    for n in "${batch[@]}"; do boot "$n" "${args_of[$n]}" & pids+=($!); done
    wait
done

# The variant's arguments as shown: the old command line by name.
shown_args() {
    local a=${1//"$OLD_CMDLINE"/(the command line of 2026-12-03)}
    echo "${a:-(defaults)}"
}
at() { sed -n "s|^\([0-9.]*\) .*$2.*|\1|p" "$work/$1.out" | head -n1; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && printf '%.2f' "$(echo "scale=4; $1 / $2" | bc -l)" || echo "?"; }
echo "machine: $(uname -n), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%dT%H:%MZ); $(cat build/stock/kernel-version)"
printf '%-12s %8s %8s %8s %6s %6s %6s %9s %8s %7s  %s\n' \
    variant to_init ready exit init/1 ready/1 exit/1 interrupts at_kick kicks args
first=${names[0]}
f_init=$(at "$first" 'Run /init as init process'); f_ready=$(at "$first" 'ftvm-init: ready')
f_exit=$(echo "scale=1; $(cat "$work/$first.ms") / 1000" | bc -l)
for n in "${names[@]}"; do
    init=$(at "$n" 'Run /init as init process'); ready=$(at "$n" 'ftvm-init: ready')
    exit_s=$(echo "scale=1; $(cat "$work/$n.ms") / 1000" | bc -l)
    read -r ints kicked kicks <<<"$(sed -n 's/.* interrupts \([0-9]*\) (\([0-9]*\) after a kick), host exits [0-9]*, kicks sent \([0-9]*\).*/\1 \2 \3/p' "$work/$n.err" | head -n1)"
    printf '%-12s %8s %8s %8s %6s %6s %6s %9s %8s %7s  %s\n' "$n" "${init:-?}" "${ready:-?}" "$exit_s" \
        "$(ratio "$init" "$f_init")" "$(ratio "$ready" "$f_ready")" "$(ratio "$exit_s" "$f_exit")" \
        "${ints:-?}" "${kicked:-?}" "${kicks:-?}" "$(shown_args "${args_of[$n]}")"
    grep -q 'ftvm-init: ready' "$work/$n.out" || { log "$n: no 'ftvm-init: ready' (see $work/$n.err)"; failed=1; }
done
echo "seconds of host time from the VMM's start; ratios against '$first'."
