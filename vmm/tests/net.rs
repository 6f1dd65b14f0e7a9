//! The network card: `--net tap=NAME` gives the guest a virtio-net function on a host TAP.
//! The tiny `virtio-net` guest echoes every frame it receives (MACs swapped) a fixed
//! number of times; the host sends frames into the TAP with a packet socket and checks
//! each echo byte for byte, under `run` and `record`; a `replay` of the log needs no TAP
//! and verifies every exit. Bad `--net` arguments and missing TAPs are one-line errors.
//! Needs root (TAP devices, packet sockets), as the test host gives.

mod common;
use common::net_guest::*;
use common::tap::{echo_of, test_frame, PacketSocket, TapGuard};
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn guest_echoes_frames_from_the_tap() {
    let tap = TapGuard::new();
    let child = spawn(&as_strs(&guest_args("run", &tap.name)));
    exchange(&tap, &DEFAULT_MAC);
    assert_echoed(&finish(child));
}

#[test]
fn a_given_mac_is_the_guests() {
    let tap = TapGuard::new();
    let mut args = guest_args("run", &tap.name);
    args[6] = format!("tap={},mac=52:54:00:ab:cd:ef", tap.name);
    let child = spawn(&as_strs(&args));
    exchange(&tap, &[0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("0x00000000000000ab 0x00000000000000cd"));
}

/// The log with the first received frame's chain head changed.
fn with_tampered_packet(log: &Path) -> Vec<u8> {
    let bytes = std::fs::read(log).unwrap();
    let mut decoder = ft_log::Decoder::new();
    decoder.push(&bytes);
    let mut out = ft_log::encode_header();
    let mut done = false;
    while let Some(mut entry) = decoder.next_entry().unwrap() {
        if let ft_log::Entry::Packet { outcome, .. } = &mut entry {
            if let (false, ft_log::PacketOutcome::Delivered { head, .. }) = (done, outcome) {
                *head += 1;
                done = true;
            }
        }
        out.extend(ft_log::encode_entry(&entry));
    }
    assert!(done, "the log has a delivered frame");
    out
}

#[test]
fn a_recording_replays_without_a_tap() {
    let tap = TapGuard::new();
    let log = temp("rr.log");
    let mut args = guest_args("record", &tap.name);
    args.insert(1, "--log".into());
    args.insert(2, log.to_str().unwrap().into());
    let child = spawn(&as_strs(&args));
    exchange(&tap, &DEFAULT_MAC);
    let rec = finish(child);
    assert_echoed(&rec);
    assert!(
        stderr(&rec).contains(&format!("packet {ECHOES}")),
        "{}",
        stderr(&rec)
    );
    drop(tap);

    // No --net: the NIC comes from the log; the TAP is gone and not needed.
    let rep = replay(&log, &[]);
    assert_verified(&rep);
    assert_eq!(
        stdout(&rep),
        stdout(&rec),
        "the replayed guest saw the same frames"
    );
    assert!(stderr(&rep).contains("exits verified"), "{}", stderr(&rep));

    // A --net given to a replayer is checked against the log, its TAP never opened.
    assert_verified(&replay(&log, &["--net", "tap=ftvm-none0"]));
    let other_mac = replay(&log, &["--net", "tap=ftvm-none0,mac=52:54:00:00:00:01"]);
    assert_eq!(other_mac.status.code(), Some(1), "{}", stderr(&other_mac));
    assert!(
        stderr(&other_mac).contains("differs from the MAC the log was made with"),
        "{}",
        stderr(&other_mac)
    );

    // A frame that lands in another chain than recorded is a divergence with both values.
    let tampered = temp("tampered.log");
    std::fs::write(&tampered, with_tampered_packet(&log)).unwrap();
    let bad = replay(&tampered, &[]);
    let err = stderr(&bad);
    assert!(
        err.contains("received frame lands differently")
            && err.contains("recorded delivered into chain 1")
            && err.contains("replayed delivered into chain 0"),
        "{err}"
    );
    for f in [log, tampered] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn frames_reach_a_guest_that_makes_no_exits_at_kicks() {
    // The guest waits for frames in a loop without exits: each frame waits at most the
    // event bound, then the kicker takes the vCPU out and (recording) a checkpoint delta
    // is logged before the frame is written into the guest.
    let tap = TapGuard::new();
    let log = temp("spin.log");
    let mut args = guest_args_of("virtio-net-spin", "record", &tap.name);
    args.insert(1, "--log".into());
    args.insert(2, log.to_str().unwrap().into());
    let child = spawn(&as_strs(&args));
    let rec = exchange_when_ready(child, &tap);
    assert_echoed(&rec);
    let err = stderr(&rec);
    assert!(
        !err.contains("(0 after a kick)"),
        "delivered at a kick: {err}"
    );
    assert!(err.contains("hlt 0,"), "the guest never halted: {err}");
    drop(tap);
    let rep = replay_of("virtio-net-spin", &log, &[]);
    assert_verified(&rep);
    let err = stderr(&rep);
    assert!(!err.contains(" 0 deltas applied"), "{err}");
    let _ = std::fs::remove_file(log);
}

/// A refused start: status 1, one line, quickly, before any guest ran.
fn assert_refused(extra: &[&str], needle: &str) {
    require_kvm();
    let mut args = vec!["run", "--kernel", guest("virtio-net"), "--mem", "16"];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let out = run_ftvm(&args, b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "slow refusal");
    assert_eq!(err.lines().count(), 1, "want one line:\n{err}");
    assert!(
        err.starts_with("ftvm: error: ") && err.contains(needle),
        "{needle:?} in {err}"
    );
    assert!(stdout(&out).is_empty(), "the guest ran: {}", stdout(&out));
}

#[test]
fn missing_or_wrong_taps_are_refused_before_the_guest_starts() {
    assert_refused(
        &["--net", "tap=ftvm-none0"],
        "TAP device ftvm-none0 does not exist",
    );
    assert_refused(&["--net", "tap=lo"], "lo is not a TUN/TAP device");
    // A TUN device is no TAP: the kernel refuses to attach it as one.
    let tun = format!("ftu{}", std::process::id() % 1_000_000);
    let made = std::process::Command::new("ip")
        .args(["tuntap", "add", "dev", &tun, "mode", "tun"])
        .status()
        .unwrap();
    assert!(made.success());
    let guard = TapGuard { name: tun.clone() };
    assert_refused(&["--net", &format!("tap={tun}")], "cannot attach to TAP");
    drop(guard);
    assert!(
        !Path::new(&format!("/sys/class/net/{tun}")).exists(),
        "the guard removed it"
    );
    // ftvm never creates a TAP it was not given.
    assert!(!Path::new("/sys/class/net/ftvm-none0").exists());
}

#[test]
fn a_tap_another_vmm_holds_is_refused() {
    let tap = TapGuard::new();
    let mut first = spawn(&as_strs(&guest_args("run", &tap.name)));
    tap.wait_attached(Duration::from_secs(20));
    assert_refused(
        &["--net", &format!("tap={}", tap.name)],
        "(is it a TAP, not a TUN, and free?): Device or resource busy",
    );
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn bad_net_specs_are_refused() {
    for (spec, needle) in [
        ("ftvm0", "bad --net 'ftvm0': 'ftvm0' is not KEY=VALUE"),
        ("tap=", "TAP name is empty"),
        ("tap=a,mac=52:54:00:12:34", "is not six bytes"),
        ("tap=a,mac=01:00:5e:00:00:01", "is a multicast address"),
        ("tap=a,mac=zz:54:00:12:34:56", "'zz' is not two hex digits"),
        ("tap=a,queues=4", "unknown option 'queues'"),
        ("tap=averyveryverylongname", "longer than 15 bytes"),
    ] {
        assert_refused(&["--net", spec], needle);
    }
}

#[test]
fn a_snapshot_keeps_its_nic_and_restores_onto_another_tap() {
    let first = TapGuard::new();
    let snap = temp("snap");
    let snap_dir = snap.to_str().unwrap();
    let mut args = guest_args("run", &first.name);
    args.extend(
        [
            "--snapshot-on",
            "virtio-net: ready",
            "--snapshot-dir",
            snap_dir,
            "--exit-after-snapshot",
        ]
        .map(String::from),
    );
    let out = finish(spawn(&as_strs(&args)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    drop(first);
    let state = std::fs::read_to_string(snap.join("state.json")).unwrap();
    assert!(
        state.contains("\"nic\"") && state.contains("tx_crc"),
        "{state}"
    );

    fn restore<'a>(snap_dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--restore", snap_dir];
        args.extend_from_slice(extra);
        args
    }
    // Without a TAP, or with another MAC: refused before the guest runs.
    let out = run_ftvm(&restore(snap_dir, &[]), b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the snapshot's machine has a network card (MAC 52:54:00:12:34:56)"),
        "{}",
        stderr(&out)
    );
    let second = TapGuard::new();
    let net = format!("tap={},mac=52:54:00:00:00:01", second.name);
    let out = run_ftvm(&restore(snap_dir, &["--net", &net]), b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("differs from the MAC the snapshot was made with"),
        "{}",
        stderr(&out)
    );

    // On another TAP: the restored guest, buffers already posted, echoes there.
    let net = format!("tap={}", second.name);
    let child = spawn(&restore(snap_dir, &["--net", &net]));
    exchange(&second, &DEFAULT_MAC);
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("virtio-net: echoed every frame"),
        "{}",
        stdout(&out)
    );

    // Recorded from the snapshot, replayed from it without a TAP.
    let log = temp("snap.log");
    let log_path = log.to_str().unwrap();
    let mut args = restore(snap_dir, &["--net", &net, "--log", log_path]);
    args[0] = "record";
    let child = spawn(&args);
    exchange(&second, &DEFAULT_MAC);
    let rec = finish(child);
    assert_eq!(rec.status.code(), Some(0), "{}", stderr(&rec));
    let mut args = restore(snap_dir, &["--log", log_path]);
    args[0] = "replay";
    assert_verified(&run_ftvm(&args, b""));
    let _ = std::fs::remove_dir_all(snap);
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_flood_is_dropped_at_the_queue_bound_and_counted() {
    // 8 test frames, then 2,000 full-size ones while the guest has 8 buffers and echoes
    // 8 frames: the receive queue keeps at most 256 frames, drops the rest and says so.
    let tap = TapGuard::new();
    let child = spawn(&as_strs(&guest_args("run", &tap.name)));
    tap.wait_attached(Duration::from_secs(20));
    let sock = PacketSocket::bind(&tap.name);
    let frames: Vec<Vec<u8>> = (0..ECHOES).map(|i| test_frame(&DEFAULT_MAC, i)).collect();
    for f in &frames {
        sock.send(f);
    }
    let mut filler = test_frame(&DEFAULT_MAC, 9);
    filler.resize(1514, 0xff);
    for _ in 0..2000 {
        sock.send(&filler);
    }
    for (i, f) in frames.iter().enumerate() {
        let echo = sock.recv(Duration::from_secs(20)).expect("an echo");
        assert_eq!(echo, echo_of(f), "echo of frame {i}, in order");
    }
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let counter = |label: &str| -> u64 {
        let at = err
            .find(label)
            .unwrap_or_else(|| panic!("{label} in {err}"));
        let digits: String = err[..at]
            .chars()
            .rev()
            .skip(1)
            .take_while(char::is_ascii_digit)
            .collect();
        digits.chars().rev().collect::<String>().parse().unwrap()
    };
    let received = counter("frames (");
    let dropped = counter("dropped, queue full");
    assert!(dropped > 0, "{err}");
    assert!(received + dropped <= 2008, "{err}");
    // The guest takes at most 16 frames (8 buffers, each reposted once).
    assert!(
        received <= 256 + 16,
        "never more than the bound held: {err}"
    );
}
