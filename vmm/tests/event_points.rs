//! Events placed by breakpoint (issue 14): tiny guests that run long stretches in kernel
//! mode while the timer runs, so every tick is delivered at a kick. Recorded with points,
//! they replay with every point found and every exit verified; recorded with
//! `--place-events delta` they replay through deltas as before; a kick in user mode is
//! still a delta; a loop whose registers repeat while its memory moves shows the wrong
//! pass at an exit, where the replay detects and recovers it.

mod common;
use common::*;

use std::path::PathBuf;

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ftvm-points-{}-{name}.log", std::process::id()))
}

/// The arguments record and replay share: the log, the guest, its memory, and the live
/// event bound from the start (these loops are about its kicks, not the boot phase's).
fn common_args<'a>(log: &'a std::path::Path, kernel: &'a str) -> [&'a str; 8] {
    [
        "--log",
        log.to_str().unwrap(),
        "--kernel",
        kernel,
        "--mem",
        "16",
        "--boot-event-bound-ms",
        "0",
    ]
}

/// Record `guest_name` with `extra` arguments, then replay it: (record, replay).
fn record_and_replay(guest_name: &str, extra: &[&str]) -> (String, String, Option<i32>) {
    require_kvm();
    let log = log_path(&format!("{guest_name}{}", extra.join("")));
    let kernel = guest(guest_name);
    let common = common_args(&log, kernel);
    let mut args = vec!["record"];
    args.extend(common);
    if extra.is_empty() {
        args.extend(["--place-events", "breakpoint"]);
    }
    args.extend(extra);
    let rec = run_ftvm(&args, b"");
    assert_eq!(rec.status.code(), Some(0), "record: {}", stderr(&rec));
    let mut args = vec!["replay"];
    args.extend(common);
    let rep = run_ftvm(&args, b"");
    let _ = std::fs::remove_file(log);
    assert!(!stdout(&rec).is_empty(), "the guest printed nothing");
    (stderr(&rec), stderr(&rep), rep.status.code())
}

/// Interrupts the recorder delivered at kicks ("interrupts 12 (12 after a kick)").
fn kicked(text: &str) -> u64 {
    text.split(" after a kick)")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no kicked interrupts in: {text}"))
}

/// The number after `what` in a report line ("placed 12").
fn count(text: &str, what: &str) -> u64 {
    text.split(what)
        .nth(1)
        .and_then(|s| s.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no '{what}' count in: {text}"))
}

#[test]
fn kernel_loops_replay_with_every_tick_placed_by_breakpoint() {
    let (rec, rep, code) = record_and_replay("kernel-loops", &[]);
    assert_eq!(code, Some(0), "{rep}");
    let placed = count(&rec, "event points: placed");
    assert!(placed >= 10, "the loops' ticks come at kicks: {rec}");
    assert_eq!(
        count(&rec, "interrupts"),
        kicked(&rec),
        "every tick at a kick: {rec}"
    );
    let periodic = count(&rec, "user mode,");
    assert_eq!(
        kicked(&rec),
        placed + periodic,
        "each kick's event at a point, or a delta at most once a second: {rec}"
    );
    // One periodic delta per --delta-interval (1 s) of guest time, which a loaded host
    // stretches (the loops run emulated: 0.9 s idle, 7 s beside two busy loops).
    let guest_s: f64 = rec
        .split(" s of guest time")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no guest time in: {rec}"));
    assert!(periodic as f64 <= guest_s.ceil() + 1.0, "{rec}");
    assert_eq!(count(&rec, "as deltas"), 0, "no kick in user mode: {rec}");
    assert!(rec.contains(&format!("point {placed}")), "{rec}");
    assert_eq!(count(&rep, "reached"), placed, "{rep}");
    assert_eq!(count(&rep, "missed"), 0, "{rep}");
    assert!(
        rep.contains(" 0 divergences") && rep.contains("matches the recording"),
        "{rep}"
    );
    assert!(rep.contains(" 0 exits skipped"), "{rep}");
}

#[test]
fn the_same_loops_recorded_with_deltas_replay_as_before() {
    let (rec, rep, code) = record_and_replay("kernel-loops", &["--place-events", "delta"]);
    assert_eq!(code, Some(0), "{rep}");
    assert_eq!(count(&rec, "event points: placed"), 0, "{rec}");
    let shipped = count(&rec, "periodic and");
    assert!(shipped >= 10, "every kick a delta: {rec}");
    assert!(
        rep.contains(" 0 divergences") && rep.contains("matches the recording"),
        "{rep}"
    );
    assert!(rep.contains(" 0 exits skipped"), "{rep}");
    let applied: u64 = rep
        .split(" deltas applied")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(applied >= shipped, "{rep}");
}

#[test]
fn a_kick_in_user_mode_is_still_a_delta() {
    let (rec, rep, code) = record_and_replay("usermode", &[]);
    assert_eq!(code, Some(0), "{rep}");
    let user = count(&rec, "as deltas");
    assert!(
        kicked(&rec) > 0,
        "the user-mode loop's ticks come at kicks: {rec}"
    );
    assert_eq!(user, kicked(&rec), "each a delta, in user mode: {rec}");
    assert_eq!(count(&rec, "event points: placed"), 0, "{rec}");
    assert!(
        rep.contains(" 0 divergences") && rep.contains("matches the recording"),
        "{rep}"
    );
}

#[test]
fn an_ambiguous_point_is_caught_at_the_next_exit_and_recovered() {
    let (rec, rep, code) = record_and_replay("point-ambiguous", &[]);
    assert!(count(&rec, "event points: placed") > 0, "{rec}");
    // The replayer delivers each tick at the first pass with the recorded registers, so
    // the count it prints differs from the recording's: detected at that exit.
    assert!(rep.contains("divergence at exit"), "{rep}");
    assert!(rep.contains("exit differs"), "{rep}");
    assert!(!rep.contains(" 0 divergences"), "{rep}");
    assert!(
        rep.contains("matches the recording"),
        "recovered through the final checkpoint: {rep}"
    );
    assert_eq!(code, Some(0), "{rep}");
}

#[test]
fn a_point_not_found_within_the_budget_is_a_divergence() {
    // With a budget of one hit, any point that is not the first pass through its RIP
    // cannot be found: reported with both sides' registers and recovered.
    require_kvm();
    let log = log_path("budget");
    let kernel = guest("kernel-loops");
    let common = common_args(&log, kernel);
    let placed = ["--place-events", "breakpoint"];
    let rec = run_ftvm(&[&["record"][..], &common[..], &placed[..]].concat(), b"");
    assert_eq!(rec.status.code(), Some(0), "{}", stderr(&rec));
    let rep = run_ftvm(
        &[
            &["replay"][..],
            &common[..],
            &["--point-search-budget", "1"][..],
        ]
        .concat(),
        b"",
    );
    let _ = std::fs::remove_file(&log);
    let err = stderr(&rep);
    assert!(
        err.contains("event point not found within the search budget"),
        "{err}"
    );
    assert!(err.contains("(recorded 0x"), "both sides' registers: {err}");
    assert!(count(&err, "missed") > 0, "{err}");
    assert!(err.contains("matches the recording"), "{err}");
    assert_eq!(rep.status.code(), Some(0), "{err}");
}

#[test]
fn the_page_check_names_the_page_an_ambiguous_point_left_different() {
    // FTVM_CHECK_PAGES compares every page at each point: the wrong pass shows there, at
    // the first point, before any exit does.
    require_kvm();
    let log = log_path("pagecheck");
    let check = log_path("pagecheck-crcs");
    let kernel = guest("point-ambiguous");
    let common = common_args(&log, kernel);
    let run = |verb: &str| {
        let placed: &[&str] = if verb == "record" {
            &["--place-events", "breakpoint"]
        } else {
            &[]
        };
        ftvm()
            .arg(verb)
            .args(common)
            .args(placed)
            .env("FTVM_CHECK_PAGES", &check)
            .env("FTVM_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ftvm")
    };
    let rec = run("record");
    assert_eq!(rec.status.code(), Some(0), "{}", stderr(&rec));
    let rep = run("replay");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&check);
    let err = stderr(&rep);
    let first_check = err.find("page check after a delta or event point");
    let first_exit = err.find("divergence at exit");
    assert!(first_check.is_some(), "{err}");
    assert!(first_exit.is_some(), "the exit shows it later: {err}");
    assert!(first_check < first_exit, "{err}");
}
