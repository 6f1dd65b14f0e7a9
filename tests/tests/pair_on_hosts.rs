//! A primary on host A and a backup on host B, their logging channel over the simulated
//! LAN, the counter tiny guest between them. The failure is seen only as silence: host
//! A's cable is cut first (then, for a power loss, its VMM is SIGKILLed), as after a real
//! power loss or partition. The console stream in the shared directory is what an
//! observer sees: every number exactly once, in order.

use ftvm_e2e::*;
use std::path::Path;
use std::time::{Duration, Instant};

const LAST: u64 = 1000;

fn console(shared: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(shared.join("counter.console")).unwrap_or_default())
        .into_owned()
}

/// Every number once, in order, from 0 to LAST, between the banners.
fn check_counter(text: &str) {
    let mut next = 0;
    for line in text.lines() {
        match line.strip_prefix("count ") {
            Some(n) => {
                assert_eq!(n.parse::<u64>().ok(), Some(next), "at '{line}' in:\n{text}");
                next += 1;
            }
            None => assert!(
                line == "counter: start" || line == "counter: done",
                "unexpected line '{line}'"
            ),
        }
    }
    assert_eq!(next, LAST + 1, "the count stopped early:\n{text}");
}

/// Primary on A, backup on B, protected; returns them once the count is under way.
fn start_pair(hosts: &Hosts) -> (Vmm, Vmm) {
    let (primary, backup) = hosts.protected_pair("counter", guest("counter"), &[]);
    let t = Instant::now();
    while !console(&hosts.shared()).contains("count 300\n") {
        assert!(t.elapsed() < Duration::from_secs(60), "no count 300");
        std::thread::sleep(Duration::from_millis(5));
    }
    (primary, backup)
}

#[test]
fn power_loss_on_host_a_is_seen_by_silence_and_the_backup_finishes() {
    require_kvm_and_root();
    let hosts = Hosts::up("power");
    let (mut primary, mut backup) = start_pair(&hosts);
    // The power goes: the cable first (nothing more leaves host A), then the VMM.
    hosts.cut("a");
    let cut = Instant::now();
    primary.kill();
    let status = backup.wait(Duration::from_secs(60));
    let err = backup.stderr();
    assert_eq!(status, 0, "backup:\n{err}");
    assert!(err.contains("live at exit"), "{err}");
    check_counter(&console(&hosts.shared()));
    eprintln!(
        "cut to the backup's end: {:.0} ms; {}",
        cut.elapsed().as_secs_f64() * 1e3,
        err.lines()
            .find(|l| l.contains("live at exit"))
            .unwrap_or("")
    );
}

#[test]
fn a_partition_leaves_exactly_one_vmm_running_the_guest() {
    require_kvm_and_root();
    let hosts = Hosts::up("split");
    let (mut primary, mut backup) = start_pair(&hosts);
    // Both sides live, neither hears the other: the test-and-set decides.
    hosts.cut("a");
    let p = primary.wait(Duration::from_secs(60));
    let b = backup.wait(Duration::from_secs(60));
    let (pe, be) = (primary.stderr(), backup.stderr());
    assert!(
        (p, b) == (0, 5) || (p, b) == (5, 0),
        "exactly one must finish the guest and the other halt: primary {p}, backup {b}\n{pe}\n{be}"
    );
    let loser = if p == 5 { &pe } else { &be };
    assert!(loser.contains("halted"), "{loser}");
    check_counter(&console(&hosts.shared()));
    // Epoch 1 was the primary's; whoever won claimed epoch 2, once, and nobody more.
    let mut owners: Vec<String> = std::fs::read_dir(hosts.shared())
        .expect("shared dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".owner"))
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        ["counter.epoch-1.owner", "counter.epoch-2.owner"],
        "the epochs claimed"
    );
}
