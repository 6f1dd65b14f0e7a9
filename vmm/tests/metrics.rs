//! What an operator sees of a running pair: `--metrics` scraped over HTTP while the
//! `counter` tiny guest runs, and `ftvm status --json`.

mod common;
use common::pair::*;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// GET /metrics from `port`: the body of a 200 answer.
fn scrape(port: u16) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of the sample whose name and labels start its line with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrape until the report is there (the first one comes within a fifth of a second).
fn scrape_report(port: u16) -> String {
    let t = Instant::now();
    loop {
        let text = scrape(port);
        if text.contains("ftvm_epoch") {
            return text;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no report:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_pair_serves_role_epoch_and_a_moving_acked_exit() {
    require_kvm();
    let dir = shared_dir("metrics");
    let (port, p_metrics, b_metrics) = (free_port(), free_port(), free_port());
    let p_at = format!("127.0.0.1:{p_metrics}");
    let b_at = format!("127.0.0.1:{b_metrics}");
    // A roomy peer timeout: this test is about what is reported, not about failover, and
    // the 2-core test host may be busy.
    let slow = ["--peer-timeout", "3000"];
    let mut p = primary_with(
        &dir,
        port,
        &pair_key(&dir),
        &[&slow[..], &["--metrics", &p_at]].concat(),
    );
    p.wait_for("metrics on http://", Duration::from_secs(30));
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let alone = scrape_report(p_metrics);
    assert_eq!(
        sample(&alone, "ftvm_role{vm=\"counter\",role=\"primary (alone)\"}"),
        Some(1.0),
        "{alone}"
    );
    let mut b = backup_with(
        &dir,
        port,
        None,
        &[&slow[..], &["--metrics", &b_at]].concat(),
    );
    p.wait_for("protected:", Duration::from_secs(30));
    // Two scrapes of the primary while the guest counts: the backup's acknowledgements move.
    let acked = |text: &str| sample(text, "ftvm_acked_exit{vm=\"counter\"}").unwrap();
    let t = Instant::now();
    let first = loop {
        let text = scrape_report(p_metrics);
        if sample(&text, "ftvm_role{vm=\"counter\",role=\"primary\"}") == Some(1.0) {
            break text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never protected:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Scrape again until the acknowledgements have moved (on a busy host the backup may
    // take a moment to start replaying).
    let t = Instant::now();
    let second = loop {
        std::thread::sleep(Duration::from_millis(200));
        let text = scrape_report(p_metrics);
        if acked(&text) > acked(&first) {
            break text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "acked exit did not move from {}:\n{text}",
            acked(&first)
        );
    };
    assert_eq!(sample(&second, "ftvm_epoch{vm=\"counter\"}"), Some(1.0));
    assert!(sample(&second, "ftvm_exit_ordinal{vm=\"counter\"}").unwrap() >= acked(&second));
    assert_eq!(
        sample(&second, "ftvm_peer_connected{vm=\"counter\"}"),
        Some(1.0)
    );
    assert!(sample(&second, "ftvm_log_bytes_total{vm=\"counter\"}").unwrap() > 0.0);
    assert_eq!(
        sample(&second, "ftvm_state_transfers_total{vm=\"counter\"}"),
        Some(1.0)
    );
    assert!(sample(&second, "ftvm_state_transfer_pages{vm=\"counter\"}").unwrap() > 0.0);
    assert!(second.contains("ftvm_output_delay_seconds_bucket{vm=\"counter\",le=\"+Inf\"}"));
    // The backup's own view: its role, the same epoch, what it has verified.
    let backup = scrape_report(b_metrics);
    assert_eq!(
        sample(&backup, "ftvm_role{vm=\"counter\",role=\"backup\"}"),
        Some(1.0),
        "{backup}"
    );
    assert_eq!(sample(&backup, "ftvm_epoch{vm=\"counter\"}"), Some(1.0));
    assert!(acked(&backup) > 0.0);
    assert_eq!(p.wait(Duration::from_secs(120)), 0, "{}", p.stderr());
    assert_eq!(
        b.wait(Duration::from_secs(120)),
        0,
        "{}\nprimary:\n{}",
        b.stderr(),
        p.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_json_shows_every_vmm() {
    require_kvm();
    let dir = shared_dir("status-json");
    let port = free_port();
    let mut p = primary(&dir, port);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let d = dir.to_str().unwrap();
    let args = ["status", "--shared-dir", d, "--name", "counter", "--json"];
    let t = Instant::now();
    let v = loop {
        let out = run_ftvm(&args, b"");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(&out)));
        if v["vmms"].as_array().is_some_and(|a| !a.is_empty()) {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no report: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["vm"], "counter");
    assert_eq!(v["epoch"], 1);
    assert!(
        v["owner"].as_str().unwrap().starts_with("primary pid"),
        "{v}"
    );
    let me = &v["vmms"][0];
    assert_eq!(me["role"], "primary (alone)", "{v}");
    assert_eq!(me["epoch"], 1);
    assert_eq!(me["pid"], p.child.id());
    assert!(me["output_cap_bytes"].as_u64().unwrap() > 0);
    // No VM of that name: an error, not an empty answer.
    let out = run_ftvm(
        &["status", "--shared-dir", d, "--name", "nothere", "--json"],
        b"",
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("no VM 'nothere'"), "{}", stderr(&out));
    p.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
