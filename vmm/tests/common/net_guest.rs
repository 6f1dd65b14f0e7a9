//! The NIC tests' guest side: running the tiny echo guests with `--net` (in the
//! background, killed after two minutes), sending them frames, checking their echoes and
//! what the VMM reported.

use super::tap::{echo_of, test_frame, PacketSocket, TapGuard};
use super::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

pub const ECHOES: usize = 8;
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

pub fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ftvm-net-{}-{name}", std::process::id()))
}

/// `ftvm ARGS` in the background, killed after two minutes whatever happens.
pub fn spawn(args: &[&str]) -> Child {
    require_kvm();
    let child = ftvm()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ftvm");
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        // SAFETY: kill(2) passes no memory; the pid is the VMM this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    child
}

/// Send the test frames into `tap` once a VMM is on it, and check every echo.
pub fn exchange(tap: &TapGuard, mac: &[u8; 6]) {
    tap.wait_attached(Duration::from_secs(20));
    let sock = PacketSocket::bind(&tap.name);
    // All sent at once: the first ones arrive before the guest has posted its buffers
    // and wait in the queue until it has.
    let frames: Vec<Vec<u8>> = (0..ECHOES).map(|i| test_frame(mac, i)).collect();
    for f in &frames {
        sock.send(f);
    }
    for (i, f) in frames.iter().enumerate() {
        let echo = sock
            .recv(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no echo of frame {i}"));
        assert_eq!(echo, echo_of(f), "echo of frame {i}");
    }
}

/// Wait until the guest says it is ready (its buffers posted, waiting), then exchange;
/// returns the VMM's output, with everything it printed.
pub fn exchange_when_ready(mut child: Child, tap: &TapGuard) -> Output {
    use std::io::BufRead;
    let pipe = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("virtio-net: ready") => break,
            Ok(_) => {}
            Err(e) => panic!("the guest never got ready: {e}"),
        }
    }
    exchange(tap, &DEFAULT_MAC);
    let mut out = finish(child);
    out.stdout = reader.join().unwrap().into_bytes();
    out
}

pub fn finish(child: Child) -> Output {
    let out = child.wait_with_output().expect("wait for ftvm");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

pub fn assert_echoed(out: &Output) {
    let text = stdout(out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(out));
    assert!(text.contains("virtio-net: pci device 1 irq 10"), "{text}");
    assert!(
        text.contains("virtio-net: mac 0x0000000000000052 0x0000000000000054 0x0000000000000000 0x0000000000000012 0x0000000000000034 0x0000000000000056"),
        "{text}"
    );
    for i in 0..ECHOES {
        let line = format!("virtio-net: frame {i} length {}", 60 + i * 150);
        assert!(text.contains(&line), "{line} in {text}");
    }
    assert!(text.contains("virtio-net: echoed every frame"), "{text}");
    let err = stderr(out);
    assert!(
        err.contains(&format!("ftvm: net: received {ECHOES} frames (0 dropped"))
            && err.contains(&format!("transmitted {ECHOES} (0 dropped")),
        "{err}"
    );
}

pub fn guest_args(role: &str, tap: &str) -> Vec<String> {
    guest_args_of("virtio-net", role, tap)
}

pub fn guest_args_of(name: &str, role: &str, tap: &str) -> Vec<String> {
    let net = format!("tap={tap}");
    [role, "--kernel", guest(name), "--mem", "16", "--net", &net]
        .map(String::from)
        .to_vec()
}

pub fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn replay(log: &Path, extra: &[&str]) -> Output {
    replay_of("virtio-net", log, extra)
}

pub fn replay_of(name: &str, log: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["replay", "--log", log.to_str().unwrap()];
    args.extend_from_slice(&["--kernel", guest(name), "--mem", "16"]);
    args.extend_from_slice(extra);
    let out = run_ftvm(&args, b"");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

pub fn assert_verified(out: &Output) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("matches the recording"), "{err}");
    assert!(err.contains(" 0 divergences"), "{err}");
    let frames = format!(" {ECHOES} received frames verified");
    assert!(err.contains(&frames), "every delivery checked: {err}");
    assert!(!err.contains("ftvm: net:"), "a replayer has no TAP: {err}");
}
