#!/usr/bin/env bash
# scripts/trace-diff.sh REV — are the tiny guests' exit traces byte-identical between
# ftvm at git revision REV and this tree? Builds REV in a worktree (its own target
# directory under build/), runs every tiny guest that both versions can run under the
# deterministic clock (--clock exits:N, --trace-exits) with the same guest binary, and
# compares the traces byte for byte. Exits 0 when all are identical, 1 otherwise (the
# first differing line is shown). Used to check that a refactor changed no behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

rev=${1:?usage: scripts/trace-diff.sh GIT-REVISION}
ensure_base_tools
old_tree=build/trace-diff/tree
old_target=build/trace-diff/target
out=build/trace-diff/out
rm -rf "$out"
mkdir -p "$out"
git worktree remove --force "$old_tree" >/dev/null 2>&1 || rm -rf "$old_tree"
git worktree prune
git worktree add --detach "$old_tree" "$rev" >/dev/null
log "building ftvm at $(git -C "$old_tree" log --format='%h %s' -1 | cut -c1-70)"
(cd "$old_tree" && CARGO_TARGET_DIR="$PWD/../target" cargo build --release -p ftvm --bin ftvm --locked)
log "building ftvm and the tiny guests here"
cargo build --release -p ftvm --bin ftvm --locked
cargo build --release -p ftvm-test-guests --locked
guests=$(ls -td target/release/build/ftvm-test-guests-*/out | head -1)
old=$old_target/release/ftvm
new=target/release/ftvm

# guest:clock, the clock giving enough virtual time per exit for timer ticks within the
# guest's run. Not the rdtsc guest: it prints the host's TSC, which differs from run to run
# of one version (only a log makes it repeat).
cases="timer:exits:2000 usermode:exits:100000 serial:exits:2000 io:exits:2000"
same=0
differ=0
for case in $cases; do
    name=${case%%:*}
    clock=${case#*:}
    elf=$guests/$name.elf
    [ -f "$elf" ] || { log "$name: no guest binary at $elf"; exit 1; }
    for side in old new; do
        bin=${!side}
        timeout 120 "$bin" run --kernel "$elf" --mem 16 --clock "$clock" \
            --trace-exits "$out/$name.$side" </dev/null >"$out/$name.$side.console" 2>"$out/$name.$side.err" || true
        [ -s "$out/$name.$side" ] || { log "$name: $side wrote no trace:"; cat "$out/$name.$side.err" >&2; exit 1; }
    done
    lines=$(wc -l <"$out/$name.new")
    if cmp -s "$out/$name.old" "$out/$name.new" && cmp -s "$out/$name.old.console" "$out/$name.new.console"; then
        log "$name ($clock): identical, $lines exits, $(grep -c ' irq ' "$out/$name.new" || true) interrupts"
        same=$((same + 1))
    else
        log "$name ($clock): DIFFERENT; first difference:"
        diff "$out/$name.old" "$out/$name.new" | head -4 >&2 || true
        differ=$((differ + 1))
    fi
done
git worktree remove --force "$old_tree" >/dev/null 2>&1 || true
log "$same identical, $differ different (traces kept in $out)"
[ "$differ" -eq 0 ]
