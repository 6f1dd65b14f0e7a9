//! A primary and a backup VMM as child processes: start them, watch their stderr, kill
//! them; shared by the pair tests.

use super::*;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TIMEOUT_MS: &str = "300";

pub struct Vmm {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Vmm {
    pub fn start(args: &[&str]) -> Self {
        let mut child = ftvm()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ftvm");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let s = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child, stderr }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until stderr contains `text`; panics after `limit`.
    pub fn wait_for(&mut self, text: &str, limit: Duration) {
        self.wait_for_nth(text, 1, limit);
    }

    /// Wait until stderr contains `text` `n` times.
    pub fn wait_for_nth(&mut self, text: &str, n: usize, limit: Duration) {
        let t = Instant::now();
        while self.stderr().matches(text).count() < n {
            if let Ok(Some(s)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!("exited with {s} before '{text}':\n{}", self.stderr());
            }
            assert!(
                t.elapsed() < limit,
                "no '{text}' within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait(&mut self, limit: Duration) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // let stderr drain
                return s.code().unwrap_or(-1);
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn shared_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ftvm-ft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pair's channel key in `dir` (made on first use; both VMMs of a test share it).
pub fn pair_key(dir: &Path) -> String {
    let path = dir.join("pair.key");
    if !path.exists() {
        // Two helpers racing to make it: whoever loses uses the winner's.
        let _ = ftvm::ft::key::ChannelKey::create(&path);
    }
    path.to_str().unwrap().to_owned()
}

pub fn primary(dir: &Path, port: u16) -> Vmm {
    primary_with_key(dir, port, &pair_key(dir))
}

/// A primary of the counter guest holding the channel key at `key`.
pub fn primary_with_key(dir: &Path, port: u16, key: &str) -> Vmm {
    primary_with(dir, port, key, &[])
}

/// A primary of the counter guest holding the channel key at `key`, with `extra`
/// arguments.
pub fn primary_with(dir: &Path, port: u16, key: &str, extra: &[&str]) -> Vmm {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "primary",
        "--shared-dir",
        dir.to_str().unwrap(),
        "--name",
        "counter",
        "--listen",
        &listen,
        "--key-file",
        key,
        "--kernel",
        guest("counter"),
        "--mem",
        "16",
    ];
    with_extra(&mut args, extra);
    Vmm::start(&args)
}

/// `extra` after `args`, and the tests' short peer timeout unless `extra` sets one.
fn with_extra<'a>(args: &mut Vec<&'a str>, extra: &[&'a str]) {
    if !extra.contains(&"--peer-timeout") {
        args.extend(["--peer-timeout", TIMEOUT_MS]);
    }
    args.extend_from_slice(extra);
}

pub fn backup(dir: &Path, primary_port: u16, listen: Option<u16>) -> Vmm {
    backup_with(dir, primary_port, listen, &[])
}

/// A backup of the counter guest with `extra` arguments.
pub fn backup_with(dir: &Path, primary_port: u16, listen: Option<u16>, extra: &[&str]) -> Vmm {
    let primary = format!("127.0.0.1:{primary_port}");
    let listen = listen.map(|p| format!("127.0.0.1:{p}"));
    let key = pair_key(dir);
    let mut args = vec![
        "backup",
        "--shared-dir",
        dir.to_str().unwrap(),
        "--name",
        "counter",
        "--primary",
        &primary,
        "--key-file",
        &key,
    ];
    if let Some(l) = &listen {
        args.extend(["--listen", l]);
    }
    with_extra(&mut args, extra);
    Vmm::start(&args)
}
