//! The logging channel admits only a VMM holding the pair's key, and shows a listener on
//! the wire nothing of the guest: real VMMs on the `counter` tiny guest, a recording
//! middlebox between them.

mod common;
use common::pair::*;
use common::*;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What crossed a middlebox, per direction.
#[derive(Default)]
struct Wire {
    to_primary: Vec<u8>,
    to_backup: Vec<u8>,
}

/// Forward one connection from `listen` to `to`, recording both directions.
fn recording_middlebox(listen: u16, to: u16) -> Arc<Mutex<Wire>> {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let l = TcpListener::bind(("127.0.0.1", listen)).unwrap();
    let w = wire.clone();
    std::thread::spawn(move || {
        let Ok((a, _)) = l.accept() else { return };
        let b = TcpStream::connect(("127.0.0.1", to)).unwrap();
        let pairs = [
            (a.try_clone().unwrap(), b.try_clone().unwrap(), true),
            (b, a, false),
        ];
        for (mut from, mut to, towards_primary) in pairs {
            let w = w.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    {
                        let mut w = w.lock().unwrap();
                        let side = if towards_primary {
                            &mut w.to_primary
                        } else {
                            &mut w.to_backup
                        };
                        side.extend_from_slice(&buf[..n]);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    wire
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_pair_needs_a_key_or_says_it_is_insecure() {
    let dir = shared_dir("nokey");
    let d = dir.to_str().unwrap();
    let base = [
        "--shared-dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--kernel",
        guest("counter"),
    ];
    let out = run_ftvm(&[&["primary"][..], &base].concat(), b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs --key-file"),
        "{}",
        stderr(&out)
    );
    let out = run_ftvm(
        &["backup", "--shared-dir", d, "--primary", "127.0.0.1:1"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs --key-file"),
        "{}",
        stderr(&out)
    );
    // A key file others can read.
    let open = dir.join("open.key");
    std::fs::write(&open, "00".repeat(32)).unwrap();
    let out = run_ftvm(
        &[
            &["primary", "--key-file", open.to_str().unwrap()][..],
            &base,
        ]
        .concat(),
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    // `ftvm keygen > FILE` leaves a private key the VMMs accept.
    let made = dir.join("made.key");
    let file = std::fs::File::create(&made).unwrap();
    let status = ftvm().arg("keygen").stdout(file).status().unwrap();
    assert!(status.success());
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(ftvm::ft::key::ChannelKey::load(&made).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_the_key_holder_joins_and_the_wire_shows_nothing_of_the_guest() {
    require_kvm();
    let dir = shared_dir("key");
    let port = free_port();
    let mut p = primary(&dir, port);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    let key = std::path::PathBuf::from(pair_key(&dir));

    // A backup with another key: refused by the primary, and it says so.
    let other = dir.join("other.key");
    let out = run_ftvm(&["keygen", other.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run_ftvm(
        &[
            "backup",
            "--shared-dir",
            dir.to_str().unwrap(),
            "--name",
            "counter",
            "--key",
            other.to_str().unwrap(),
            "--primary",
            &format!("127.0.0.1:{port}"),
        ],
        b"",
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("handshake"), "{}", stderr(&out));
    p.wait_for(
        "does not hold this VM's channel key",
        Duration::from_secs(20),
    );

    // The real backup, through a recording middlebox.
    let via = free_port();
    let wire = recording_middlebox(via, port);
    let mut b = backup(&dir, via, None);
    wait_protected(&mut p, &mut b, 1, Duration::from_secs(30));
    assert_eq!(p.wait(Duration::from_secs(120)), 0, "{}", p.stderr());
    assert_eq!(b.wait(Duration::from_secs(60)), 0, "{}", b.stderr());
    let (to_primary, to_backup) = {
        let w = wire.lock().unwrap();
        (w.to_primary.clone(), w.to_backup.clone())
    };
    // The state transfer carried the guest's memory, whose image holds these strings,
    // and the log carried its run; none of it is readable on the wire.
    assert!(to_backup.len() > 64 << 10, "only {} bytes", to_backup.len());
    for secret in [&b"counter: start"[..], b"count ", b"FTVMCHN"] {
        assert!(
            !contains(&to_backup, secret),
            "{:?} on the wire",
            String::from_utf8_lossy(secret)
        );
        assert!(!contains(&to_primary, secret));
    }

    // The backup's recorded bytes, played to a new primary that holds the same key: the
    // handshake's first message replays, the first record does not; it learns nothing.
    let dir2 = shared_dir("key-replay");
    let port2 = free_port();
    let mut p2 = primary_with_key(&dir2, port2, key.to_str().unwrap());
    p2.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut s = TcpStream::connect(("127.0.0.1", port2)).unwrap();
    s.write_all(&to_primary).unwrap();
    p2.wait_for("could not join", Duration::from_secs(20));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.len() <= 50,
        "the replayed session got {} bytes",
        answer.len()
    );
    assert!(
        p2.stderr().contains("failed authentication"),
        "{}",
        p2.stderr()
    );
    p2.kill();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn peers_stalling_their_handshakes_do_not_keep_a_backup_waiting() {
    require_kvm();
    let dir = shared_dir("stalled-handshakes");
    let port = free_port();
    let mut p = primary(&dir, port);
    p.wait_for("waiting for a backup", Duration::from_secs(30));
    // Two peers connect and never finish a handshake (one silent, one trickling a byte
    // now and then): each may hold a handshake for 10 s, but not the primary.
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut trickler = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_trickling = stop.clone();
    let trickling = std::thread::spawn(move || {
        while !stop_trickling.load(std::sync::atomic::Ordering::SeqCst) {
            if trickler.write_all(&[0]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let joined = std::time::Instant::now();
    let _b = backup(&dir, port, None);
    p.wait_for("protected:", Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = trickling.join();
    assert!(
        joined.elapsed() < Duration::from_secs(5),
        "the backup waited {:?} behind the stalled handshakes:\n{}",
        joined.elapsed(),
        p.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
