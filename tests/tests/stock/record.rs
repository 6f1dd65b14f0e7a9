//! `ftvm record` of the stock guest from its snapshot while it receives network traffic
//! and writes its disk, then `ftvm replay` of the log on another host with no TAP and a
//! fresh copy of the snapshot's disks: every exit verified, equal digests, and the two
//! data disks equal byte for byte afterwards.

use super::*;

/// 64 KiB to the guest's port 5003, once it listens.
const SEND: &str = r#"
import socket, sys, time
deadline = time.time() + 120
while True:
    try:
        s = socket.create_connection((sys.argv[1], 5003), timeout=5)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
s.settimeout(300)
s.sendall(bytes(range(256)) * 256)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
print("sent")
"#;

pub fn recorded_io_replays_without_a_tap(
    hosts: &Hosts,
    snap: &Path,
    disks: &StockDisks,
    dir: &Path,
) {
    let log = dir.join("io.log");
    let recorded = disks.copy_to(&dir.join("record"));
    let mut args = vec![
        "record".to_string(),
        "--log".into(),
        log.display().to_string(),
    ];
    args.extend(restore_args(snap, &recorded));
    let mut vm = hosts.console("a", &args);
    let ns = format!("{}-client", hosts.name);
    let sender = std::thread::spawn(move || {
        Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", SEND, GUEST_ADDR])
            .output()
            .expect("run the sender")
    });
    let out = vm.run(
        "nc -l -p 5003 </dev/null >/mnt/recorded.bin; sync; sha256sum /mnt/recorded.bin",
        Duration::from_secs(600),
    );
    let sent = sender.join().expect("sender thread");
    assert!(
        sent.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let want = sha256_hex(&(0..=255u8).cycle().take(64 << 10).collect::<Vec<_>>());
    assert!(out.contains(&want), "{out}");
    assert_eq!(vm.exit(0, Duration::from_secs(300)), 0, "{}", vm.stderr());
    let record_err = vm.stderr();

    // The replay: no --net (so no TAP), the snapshot's disks copied afresh.
    let replayed = disks.copy_to(&dir.join("replay"));
    let mut args = vec![
        "replay".to_string(),
        "--log".into(),
        log.display().to_string(),
        "--restore".into(),
        snap.display().to_string(),
    ];
    args.extend(replayed.args());
    let rep = ftvm()
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run the replay");
    let rep_err = String::from_utf8_lossy(&rep.stderr);
    assert!(
        rep_err.contains("matches the recording"),
        "replay:\n{rep_err}\nrecord:\n{record_err}"
    );
    assert_eq!(rep.status.code(), Some(0), "replay:\n{rep_err}");
    assert!(String::from_utf8_lossy(&rep.stdout).contains(&want));
    assert!(
        std::fs::read(&recorded.data).unwrap() == std::fs::read(&replayed.data).unwrap(),
        "the replayed data disk differs from the recorded one"
    );
    let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "stock record/replay with 64 KiB received and written to ext4: log {log_bytes} bytes; \
         replay verified, disks equal"
    );
    for line in record_err.lines().chain(rep_err.lines()) {
        if line.starts_with("ftvm record:") || line.starts_with("ftvm replay:") {
            eprintln!("  {line}");
        }
    }
    let _ = std::fs::remove_file(&log);
}
