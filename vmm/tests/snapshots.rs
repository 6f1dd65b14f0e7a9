//! Snapshot a running tiny guest, restore it in a new process, and reject snapshots that
//! are corrupt, truncated, from another version, or hold invalid state.

mod common;
use common::*;

use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ftvm-snap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Boot `guest`, snapshot it when it prints `line`, and stop.
fn snapshot(guest_name: &str, line: &str, dir: &Path) {
    let out = run_guest(
        guest_name,
        &[
            "--snapshot-on",
            line,
            "--snapshot-dir",
            dir.to_str().unwrap(),
            "--exit-after-snapshot",
        ],
        b"",
        0,
    );
    assert!(
        stderr(&out).contains("snapshot saved to"),
        "{}",
        stderr(&out)
    );
    for f in ["manifest.json", "state.json", "memory.bin"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
}

fn restore(dir: &Path, input: &[u8]) -> std::process::Output {
    require_kvm();
    run_ftvm(&["run", "--restore", dir.to_str().unwrap()], input)
}

#[test]
fn serial_guest_continues_after_restore_in_a_new_process() {
    let dir = temp_dir("serial");
    snapshot("serial", "serial: ready", &dir);
    let out = restore(&dir, b"restored.");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("serial: ready"),
        "the restored VM must not boot again: {text}"
    );
    assert!(text.contains("RESTORED."), "{text}");
    assert!(text.contains("serial: bye"), "{text}");
    // A snapshot can be restored more than once.
    let again = restore(&dir, b"twice.");
    assert!(stdout(&again).contains("TWICE."), "{}", stdout(&again));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn timer_guest_keeps_its_timer_state_across_restore() {
    let dir = temp_dir("timer");
    snapshot("timer", "tick 20", &dir);
    let out = restore(&dir, b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("timer: start"), "{text}");
    assert!(
        text.contains("tick 40") && text.contains("timer: done, ticks=50"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn snapshot_dir_must_not_exist() {
    let dir = temp_dir("exists");
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_guest(
        "serial",
        &[
            "--snapshot-on",
            "serial: ready",
            "--snapshot-dir",
            dir.to_str().unwrap(),
        ],
        b"",
        1,
    );
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh snapshot of the serial guest to damage.
fn damaged(name: &str, damage: impl FnOnce(&Path)) -> std::process::Output {
    let dir = temp_dir(name);
    snapshot("serial", "serial: ready", &dir);
    damage(&dir);
    let out = restore(&dir, b".");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn assert_rejected(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "want {needle:?}: {err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn corrupt_memory_is_detected() {
    let out = damaged("corrupt-mem", |d| {
        let p = d.join("memory.bin");
        let mut m = std::fs::read(&p).unwrap();
        m[0x10_0000] ^= 0xff;
        std::fs::write(&p, m).unwrap();
    });
    assert_rejected(&out, "memory.bin is corrupt: memory checksum");
}

#[test]
fn truncated_memory_is_detected() {
    let out = damaged("short-mem", |d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("memory.bin"))
            .unwrap();
        f.set_len(4096).unwrap();
    });
    assert_rejected(&out, "memory.bin is corrupt: memory length");
}

#[test]
fn corrupt_state_is_detected() {
    let out = damaged("corrupt-state", |d| {
        let p = d.join("state.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("\"ordinal\": ", "\"ordinal\": 1", 1);
        std::fs::write(&p, s).unwrap();
    });
    assert_rejected(&out, "state.json is corrupt: state length");
}

#[test]
fn other_versions_are_refused() {
    let out = damaged("version", |d| {
        let p = d.join("manifest.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 99");
        std::fs::write(&p, s).unwrap();
    });
    assert_rejected(&out, "has format version 99");
}

#[test]
fn missing_snapshot_is_reported() {
    let out = run_ftvm(&["run", "--restore", "/nonexistent/snap"], b"");
    assert_rejected(&out, "cannot read /nonexistent/snap/manifest.json");
}

#[test]
fn invalid_device_state_with_valid_checksum_is_refused() {
    // State that passes the checksum but not validation, as a hostile peer could send.
    let out = damaged("bad-pit", |d| {
        let p = d.join("state.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        // The platform state is a list of device states, each tagged with its device.
        let devices = v["platform"]["devices"].as_array_mut().unwrap();
        let pit = devices.iter_mut().find(|d| d.get("pit").is_some()).unwrap();
        pit["pit"]["channels"][0]["mode"] = serde_json::json!(9);
        let bytes = serde_json::to_vec_pretty(&v).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        let mp = d.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
        m["state"]["bytes"] = serde_json::json!(bytes.len());
        m["state"]["crc32"] = serde_json::json!(crc32fast::hash(&bytes));
        std::fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    });
    assert_rejected(&out, "invalid PIT state");
    assert!(stderr(&out).contains("mode 9"), "{}", stderr(&out));
}
