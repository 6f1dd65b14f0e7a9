//! A backup that diverges (the `tsc-counter` guest prints native RDTSC values, which no
//! VMM can record here) is resynchronised by a full checkpoint from its primary. The
//! console output the primary held at that checkpoint was never produced by the backup's
//! replay, yet the acknowledgement of the checkpoint releases it on the primary: the
//! backup must hold and release it too, or it would exist only on the primary (and be
//! lost from the stream if the primary died right after that acknowledgement). And a
//! resync checkpoint sends only the pages that changed, not the guest's whole memory.

mod common;
use common::pair::*;
use common::*;

use std::time::Duration;

/// Bytes the output-rule report of a VMM says it released.
fn released(stderr: &str) -> u64 {
    stderr
        .split("ftvm: output rule: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no output-rule report in: {stderr}"))
}

/// Full checkpoints and the pages they listed, from a recorder's log summary.
fn full_checkpoints(stderr: &str) -> (u64, u64) {
    let figures = stderr
        .split("of them full checkpoints ")
        .nth(1)
        .unwrap_or_else(|| panic!("no full checkpoints counted in: {stderr}"));
    let numbers: Vec<u64> = figures
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    (numbers[0], numbers[2])
}

#[test]
fn a_resynchronised_backup_releases_what_its_primary_held_at_the_checkpoint() {
    require_kvm();
    let dir = shared_dir("resync");
    let port = free_port();
    let key = pair_key(&dir);
    // No failover wanted here: a peer timeout that a loaded host's scheduling cannot
    // reach (with the tests' 300 ms, a backup starved beside the stock boot once took
    // over from a primary that was only slow).
    let slow = ["--peer-timeout", "5000"];
    let mut p = primary_of("tsc", "tsc-counter", &dir, port, &key, &slow);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut b = backup_of("tsc", &dir, port, None, &slow);
    let (pc, bc) = (
        p.wait(Duration::from_secs(120)),
        b.wait(Duration::from_secs(60)),
    );
    let (primary, backup) = (p.stderr(), b.stderr());
    assert_eq!(
        (pc, bc),
        (0, 0),
        "both end with the guest\nprimary: {primary}\nbackup: {backup}"
    );
    assert!(
        backup.contains("divergence at exit"),
        "the RDTSC values diverge the backup: {backup}"
    );
    assert!(!backup.contains("primary lost"), "{backup}");
    // What the primary released after the backup joined, the backup released too (some
    // bytes twice, where the held output began before what it had already released).
    let joined_at: u64 = backup
        .split("console from byte ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no console offset in: {backup}"));
    assert!(
        released(&backup) + joined_at >= released(&primary),
        "backup released {} bytes, the primary {} ({} before the backup joined)\nprimary: {primary}\nbackup: {backup}",
        released(&backup),
        released(&primary),
        joined_at
    );
    // A resync checkpoint covers all of memory but sends only what changed since the
    // last checkpoint both sides hold: a few of the guest's 4,096 pages, not all of them.
    let (full, pages) = full_checkpoints(&primary);
    assert!(full >= 2, "resyncs and the final checkpoint: {primary}");
    assert!(
        pages <= full * 64,
        "{pages} pages in {full} full checkpoints of a 16 MiB guest: {primary}"
    );
    eprintln!("{full} full checkpoints, {pages} pages in all");
    let console = std::fs::read_to_string(dir.join("tsc.console")).unwrap_or_default();
    assert!(console.ends_with("tsc-counter: done\n"), "{console}");
    for (i, n) in console
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .enumerate()
    {
        assert_eq!(n, i.to_string(), "every count once, in order:\n{console}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
