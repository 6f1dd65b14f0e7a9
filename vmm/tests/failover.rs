//! A primary and a backup as separate processes, on the `counter` tiny guest: the console
//! stream (the observer's view) must show every number exactly once, in order, whatever
//! is killed or cut and whenever.

mod common;
use common::pair::*;
use common::*;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The counter guest prints "count 0" .. "count LAST".
const LAST: u64 = 1000;

fn console(dir: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(dir.join("counter.console")).unwrap_or_default())
        .into_owned()
}

/// Every number once, in order, from 0 to LAST, and nothing else but the banners.
fn check_counter(text: &str) {
    let mut next = 0;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("count ") {
            let n: u64 = n
                .parse()
                .unwrap_or_else(|_| panic!("garbled line '{line}' in:\n{text}"));
            assert_eq!(n, next, "expected count {next}, got '{line}'");
            next += 1;
        } else {
            assert!(
                line == "counter: start" || line == "counter: done",
                "unexpected line '{line}'"
            );
        }
    }
    assert_eq!(next, LAST + 1, "the count stopped early:\n{text}");
    assert_eq!(text.matches("counter: start").count(), 1);
    assert!(text.ends_with("counter: done\n"), "{text}");
}

/// The primary's mean output-rule delay from its status file (ms), if it wrote one.
fn primary_output_delay(dir: &Path) -> Option<f64> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if v["role"] == "primary" {
            return v["output_delay_avg_ms"].as_f64();
        }
    }
    None
}

/// Whether the primary's guest ran to its end before a backup joined (it then says it
/// could not transfer the state of a guest that has powered off); false once it is
/// protected, or after `limit`.
fn guest_ended_before_the_join(p: &mut Vmm, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        let said = p.stderr();
        if said.contains("protected:") {
            return false;
        }
        if said.contains("could not join") && said.contains("guest powered off") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Largest count in the stream so far.
fn last_count(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .next_back()
}

#[test]
fn the_counter_survives_killing_the_primary_at_twenty_moments() {
    require_kvm();
    let mut failover_ms = Vec::new();
    let mut delays = Vec::new();
    // Rounds in which the primary had lost its backup before the kill (the backup starved
    // past the peer timeout on a loaded machine): the pair was no longer protected,
    // so the kill tests nothing but the split rule; such a round is checked and redone.
    let mut split_before_kill = 0;
    // Rounds in which the guest ran its whole course (about 30 s) before the backup had
    // joined: seen once in CI beside the stock kernel's failovers, cause not known (the
    // primary's side only was shown). Nothing to kill in such a round: redone, twice at
    // most, with what both VMMs said.
    let mut joined_too_late = 0;
    let mut round = 0u64;
    while round < 20 {
        let dir = shared_dir(&format!("kill{round}"));
        let port = free_port();
        let mut p = primary(&dir, port);
        p.wait_for("waiting for a backup", Duration::from_secs(30));
        let mut b = backup(&dir, port, None);
        if guest_ended_before_the_join(&mut p, Duration::from_secs(30)) {
            joined_too_late += 1;
            let said = format!("{}\n--- the backup:\n{}", p.stderr(), b.stderr());
            assert!(
                joined_too_late <= 2,
                "{joined_too_late} late joins; last:\n{said}"
            );
            eprintln!("round {round}: the guest ended before the backup joined; redone:\n{said}");
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        wait_protected(&mut p, &mut b, 1, Duration::from_secs(30));
        // Spread the kill moments over the run (and a little pseudo-randomness).
        let delay = (round * 97 + round * round * 13) % 1500;
        std::thread::sleep(Duration::from_millis(delay));
        let before = console(&dir);
        if let Some(d) = primary_output_delay(&dir) {
            delays.push(d);
        }
        p.kill();
        let killed = Instant::now();
        // What the observer sees: the longest stretch without new console output after
        // the kill (the backup keeps releasing what it verified, then goes silent until
        // it is live), and when the backup said it was live.
        let mut len = before.len();
        let mut grew_at = killed;
        let mut gap = Duration::ZERO;
        let mut live_at = None;
        while killed.elapsed() < Duration::from_secs(20) {
            let now = console(&dir);
            if now.len() > len {
                gap = gap.max(grew_at.elapsed());
                len = now.len();
                grew_at = Instant::now();
            }
            if live_at.is_none() && b.stderr().contains("live at exit") {
                live_at = Some(killed.elapsed());
            }
            if now.ends_with("counter: done\n") || b.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = b.wait(Duration::from_secs(60));
        let err = b.stderr();
        // The primary took the next epoch alone before it died (it may have won the claim
        // and been killed before saying so): the backup must have lost the test-and-set to
        // it and halted (exit 5), never gone live.
        let to_primary = format!(
            "lost the test-and-set for epoch 2 to primary pid {}",
            p.child.id()
        );
        if p.stderr().contains("went on alone") || err.contains(&to_primary) {
            assert_eq!(status, 5, "backup of a primary gone alone:\n{err}");
            assert!(!err.contains("live at exit"), "{err}");
            split_before_kill += 1;
            assert!(
                split_before_kill <= 10,
                "the pair split before the kill in {split_before_kill} rounds; last:\n{}",
                p.stderr()
            );
            eprintln!("round {round}: the primary went on alone before the kill; redone");
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        assert_eq!(status, 0, "backup after the kill at {delay} ms:\n{err}");
        let text = console(&dir);
        check_counter(&text);
        if last_count(&before).unwrap_or(0) < LAST {
            assert!(err.contains("going live"), "{err}");
            assert!(err.contains("live at exit"), "{err}");
            failover_ms.push((
                gap.as_secs_f64() * 1e3,
                live_at.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
        round += 1;
    }
    assert!(
        failover_ms.len() >= 15,
        "too few kills landed mid-run: {failover_ms:?}"
    );
    let median_max = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (gap_med, gap_max) = median_max(failover_ms.iter().map(|f| f.0).collect());
    let (live_med, live_max) = median_max(failover_ms.iter().map(|f| f.1).collect());
    eprintln!(
        "failover over {} kills (peer timeout {TIMEOUT_MS} ms): longest console silence \
         median {gap_med:.0} ms, max {gap_max:.0} ms; kill to live median {live_med:.0} ms, \
         max {live_max:.0} ms",
        failover_ms.len()
    );
    if !delays.is_empty() {
        let avg = delays.iter().sum::<f64>() / delays.len() as f64;
        eprintln!("output rule: mean delay of the primary's console output {avg:.2} ms");
    }
}

#[test]
fn a_lost_backup_is_replaced_and_the_new_pair_fails_over_again() {
    require_kvm();
    let dir = shared_dir("reprotect");
    let port = free_port();
    let port2 = free_port();
    let mut p = primary(&dir, port);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut b1 = backup(&dir, port, None);
    wait_protected(&mut p, &mut b1, 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    b1.kill();
    p.wait_for("went on alone", Duration::from_secs(10));
    assert!(p.stderr().contains("epoch 2"), "{}", p.stderr());
    // A new backup joins the running primary, and takes over when it dies.
    let mut b2 = backup(&dir, port, Some(port2));
    wait_protected(&mut p, &mut b2, 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    p.kill();
    b2.wait_for("live at exit", Duration::from_secs(20));
    assert!(b2.stderr().contains("won epoch 3"), "{}", b2.stderr());
    // And it accepts a third backup in turn.
    let mut b3 = backup(&dir, port2, None);
    wait_protected(&mut b2, &mut b3, 1, Duration::from_secs(30));
    let status2 = b2.wait(Duration::from_secs(60));
    let status3 = b3.wait(Duration::from_secs(30));
    let (e2, e3) = (b2.stderr(), b3.stderr());
    assert_eq!(
        (status2, status3),
        (0, 0),
        "the second backup, primary since epoch 3:\n{e2}\nthe third backup:\n{e3}"
    );
    check_counter(&console(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Forwards between a backup and its primary until told to go silent: then both
/// connections stay open but nothing passes, as in a network partition.
fn partition_proxy(listen: u16, to: u16, cut: Arc<std::sync::atomic::AtomicBool>) {
    let l = TcpListener::bind(("127.0.0.1", listen)).unwrap();
    std::thread::spawn(move || {
        let Ok((a, _)) = l.accept() else { return };
        let b = TcpStream::connect(("127.0.0.1", to)).unwrap();
        for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
            let cut = cut.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        // Swallow, and keep the connection open.
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[test]
fn cutting_the_channel_leaves_exactly_one_running() {
    require_kvm();
    let dir = shared_dir("cut");
    let port = free_port();
    let proxy = free_port();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    partition_proxy(proxy, port, cut.clone());
    let mut p = primary(&dir, port);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut b = backup(&dir, proxy, None);
    wait_protected(&mut p, &mut b, 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(400));
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let sp = p.wait(Duration::from_secs(60));
    let sb = b.wait(Duration::from_secs(60));
    let (pe, be) = (p.stderr(), b.stderr());
    // One halted (status 5, having lost the test-and-set), the other finished the guest.
    let mut statuses = [sp, sb];
    statuses.sort();
    assert_eq!(statuses, [0, 5], "primary {sp}:\n{pe}\nbackup {sb}:\n{be}");
    let loser = if sp == 5 { &pe } else { &be };
    assert!(
        loser.contains("lost the test-and-set for epoch 2"),
        "{loser}"
    );
    check_counter(&console(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_peers_and_settings_are_refused_clearly() {
    require_kvm();
    let dir = shared_dir("bad");
    let d = dir.to_str().unwrap();
    let key = pair_key(&dir);
    // Nobody at the primary's address.
    let port = free_port();
    let out = run_ftvm(
        &[
            "backup",
            "--shared-dir",
            d,
            "--key-file",
            &key,
            "--primary",
            &format!("127.0.0.1:{port}"),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the primary"),
        "{}",
        stderr(&out)
    );
    // A shared directory that does not exist, and a bad name.
    let out = run_ftvm(
        &[
            "primary",
            "--shared-dir",
            "/nonexistent/ftvm",
            "--listen",
            "127.0.0.1:0",
            "--kernel",
            guest("counter"),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = run_ftvm(
        &[
            "primary",
            "--shared-dir",
            d,
            "--name",
            "a/b",
            "--listen",
            "127.0.0.1:0",
            "--kernel",
            guest("counter"),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("VM name 'a/b'"), "{}", stderr(&out));

    // A running primary: garbage on its port, a backup for another VM, a second primary
    // of the same name: all refused, and the guest runs to the end undisturbed.
    let mut p = primary(&dir, port);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    p.wait_for("could not join", Duration::from_secs(20));
    let out = run_ftvm(
        &[
            "backup",
            "--shared-dir",
            d,
            "--name",
            "other",
            "--key-file",
            &key,
            "--primary",
            &format!("127.0.0.1:{port}"),
        ],
        b"",
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run_ftvm(
        &[
            "primary",
            "--shared-dir",
            d,
            "--name",
            "counter",
            "--key-file",
            &key,
            "--listen",
            "127.0.0.1:0",
            "--kernel",
            guest("counter"),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already has an owner"),
        "{}",
        stderr(&out)
    );
    let status = ftvm()
        .args(["status", "--shared-dir", d, "--name", "counter"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("epoch 1 owned by primary"), "{text}");
    assert!(text.contains("primary (alone)"), "{text}");
    assert_eq!(p.wait(Duration::from_secs(60)), 0, "{}", p.stderr());
    check_counter(&console(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_that_powers_off_ends_both_vmms_without_a_failover() {
    require_kvm();
    let dir = shared_dir("clean-end");
    let port = free_port();
    let mut p = primary(&dir, port);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut b = backup(&dir, port, None);
    assert_eq!(p.wait(Duration::from_secs(120)), 0, "{}", p.stderr());
    assert_eq!(b.wait(Duration::from_secs(60)), 0, "{}", b.stderr());
    // The primary said goodbye: its close was the end of the run, not a loss.
    let err = b.stderr();
    assert!(!err.contains("primary lost"), "{err}");
    assert!(err.contains("matches the recording"), "{err}");
    let owners: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".owner"))
        .collect();
    assert_eq!(
        owners,
        ["counter.epoch-1.owner"],
        "no epoch claimed after the end"
    );
    check_counter(&console(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}
