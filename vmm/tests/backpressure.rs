//! Back-pressure has a bound: a backup that stops taking the primary's output (here:
//! stopped with SIGSTOP, under a peer timeout long enough that silence is not what
//! catches it) may stall the guest's console for `--stall-limit` at most; then the primary
//! counts the backup as lost, goes on alone and the guest finishes, every number once.

mod common;
use common::pair::*;
use common::*;

use std::time::Duration;

fn signal(vmm: &Vmm, sig: libc::c_int) {
    // SAFETY: kill(2) passes no memory of ours; the pid is a child we started and have
    // not reaped (Vmm reaps it on drop).
    let r = unsafe { libc::kill(vmm.child.id() as i32, sig) };
    assert_eq!(r, 0, "kill({sig})");
}

#[test]
fn held_output_at_its_cap_makes_a_stuck_backup_lost() {
    require_kvm();
    let dir = shared_dir("outcap");
    let port = free_port();
    // Silence would take a minute to notice; the 1 KiB output cap and a 500 ms stall
    // limit must act long before.
    let limits = [
        "--peer-timeout",
        "60000",
        "--stall-limit",
        "500",
        "--output-cap",
        "1",
    ];
    let mut p = primary_with(&dir, port, &pair_key(&dir), &limits);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut b = backup_with(&dir, port, None, &limits[..2]);
    wait_protected(&mut p, &mut b, 1, Duration::from_secs(30));
    // Stopped once it replays: that line comes after its epoch check (stopped before it,
    // it would find the epoch the primary takes when it goes alone, and refuse it: seen in CI).
    b.wait_for("replaying from exit", Duration::from_secs(30));
    signal(&b, libc::SIGSTOP);
    p.wait_for("went on alone", Duration::from_secs(20));
    let err = p.stderr();
    assert!(err.contains("held output at its cap (1024 bytes)"), "{err}");
    assert_eq!(p.wait(Duration::from_secs(60)), 0, "{}", p.stderr());
    // Every number once, in order: nothing lost while the output waited.
    let text =
        String::from_utf8_lossy(&std::fs::read(dir.join("counter.console")).unwrap()).into_owned();
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect();
    assert_eq!(counts, (0..=1000).collect::<Vec<u64>>(), "{text}");
    assert!(text.ends_with("counter: done\n"), "{text}");
    // The backup, woken, finds its primary gone and the epoch taken: it halts.
    signal(&b, libc::SIGCONT);
    assert_eq!(b.wait(Duration::from_secs(120)), 5, "{}", b.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}
