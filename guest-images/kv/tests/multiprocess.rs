//! The real binaries as separate processes: a `viewservice`, several `kvserver`s and
//! `kvclient`s on 127.0.0.1. The primary and the backup are SIGKILLed (`Child::kill`) in
//! turn, and restarted on their address, while the clients append; no append may be lost
//! or duplicated.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{check_appends, wait_for, PATIENCE};
use ftvm_kv::client::get_view;
use ftvm_kv::net::{Caller, Faults};
use ftvm_kv::protocol::{Request, ViewReply};

/// A child process that is SIGKILLed when dropped, so a failing test leaves nothing behind.
struct Proc(Child);

impl Proc {
    fn sigkill(&mut self) {
        let _ = self.0.kill(); // std's Child::kill sends SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Reads the first line a child prints (its address), with a timeout.
fn first_line(out: ChildStdout) -> String {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while matches!(r.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
    });
    rx.recv_timeout(PATIENCE).expect("child printed nothing")
}

fn start(bin: &str, args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(bin)
        .args(args)
        .args(verbose().then_some("--verbose"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let child = Proc(child);
    let line = first_line(stdout);
    let addr = line
        .split_whitespace()
        .last()
        .unwrap_or_else(|| panic!("{bin} printed {line:?}"))
        .to_string();
    (child, addr)
}

/// `KV_TEST_VERBOSE=1` makes the servers print their view changes.
fn verbose() -> bool {
    std::env::var_os("KV_TEST_VERBOSE").is_some()
}

const VS: &str = env!("CARGO_BIN_EXE_viewservice");
const SERVER: &str = env!("CARGO_BIN_EXE_kvserver");
const CLIENT: &str = env!("CARGO_BIN_EXE_kvclient");

fn start_server(vs: &str, listen: &str) -> (Proc, String) {
    start(
        SERVER,
        &[
            "--vs",
            vs,
            "--listen",
            listen,
            "--ping-interval-ms",
            "20",
            "--rpc-timeout-ms",
            "500",
        ],
    )
}

#[test]
fn processes_survive_sigkill_of_primary_and_backup() {
    let (_vs_proc, vs) = start(
        VS,
        &[
            "--listen",
            "127.0.0.1:0",
            "--ping-interval-ms",
            "20",
            "--dead-pings",
            "10",
        ],
    );
    let caller = Caller::new(Arc::new(Faults::default()), Duration::from_secs(2));
    let view = || get_view(&caller, &vs).ok();

    // Servers by address; the process of each.
    let mut servers: BTreeMap<String, Proc> = BTreeMap::new();
    for _ in 0..3 {
        let (child, addr) = start_server(&vs, "127.0.0.1:0");
        servers.insert(addr, child);
    }
    // An acknowledged view, numbered at least `min`, whose primary and backup are running.
    // (A victim restarted on its address runs again, but it has lost its state: the view it
    // was killed in no longer counts.)
    let stable = |servers: &BTreeMap<String, Proc>, min: u64| -> ViewReply {
        let start = Instant::now();
        loop {
            if let Some(r) = view().filter(|r| {
                r.acked
                    && r.view.num >= min
                    && r.view
                        .primary
                        .as_ref()
                        .is_some_and(|p| servers.contains_key(p))
                    && r.view
                        .backup
                        .as_ref()
                        .is_some_and(|b| servers.contains_key(b))
            }) {
                return r;
            }
            if start.elapsed() > PATIENCE {
                let statuses: Vec<_> = servers
                    .keys()
                    .map(|s| caller.call(s, &Request::Status))
                    .collect();
                panic!(
                    "no stable view: view service says {:?}; servers say {statuses:#?}",
                    view()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    };
    let mut min_view = stable(&servers, 0).view.num;

    // Client processes appending concurrently; they print each completed append.
    const CLIENTS: usize = 3;
    const APPENDS: usize = 100;
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let mut child = Command::new(CLIENT)
            .args(["--vs", &vs, "--timeout-ms", "30000", "--retry-ms", "10"])
            .args(["append-many", "--progress", "--key", "log", "--tag"])
            .arg(format!("c{n}"))
            .args(["--count", &APPENDS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kvclient");
        let out = BufReader::new(child.stdout.take().unwrap());
        let done = done.clone();
        let reader = thread::spawn(move || {
            let mut last = String::new();
            for line in out.lines().map_while(Result::ok) {
                if line.starts_with("ok ") {
                    done.fetch_add(1, Ordering::SeqCst);
                }
                last = line;
            }
            last
        });
        clients.push((Proc(child), reader));
    }

    // Kill the primary, then the backup, ... and restart each victim on its address, letting
    // the clients complete a few appends between crashes.
    for round in 0..6 {
        let r = stable(&servers, min_view);
        let victim = if round % 2 == 0 {
            r.view.primary.unwrap()
        } else {
            r.view.backup.unwrap()
        };
        min_view = r.view.num + 1;
        servers.remove(&victim).unwrap().sigkill();
        // Restart at once (the view service learns of the crash from the restarted server's
        // ping with view 0) or after the view service declared the victim dead.
        let pause = if round % 3 == 2 { 400 } else { 50 };
        thread::sleep(Duration::from_millis(pause));
        let (child, addr) = start_server(&vs, &victim);
        assert_eq!(addr, victim, "restarted on the same address");
        servers.insert(addr, child);
        let seen = done.load(Ordering::SeqCst);
        wait_for("client progress", || {
            let now = done.load(Ordering::SeqCst);
            (now >= seen + 10 || now == CLIENTS * APPENDS).then_some(())
        });
    }

    for (n, (mut c, reader)) in clients.into_iter().enumerate() {
        let status = c.0.wait().expect("kvclient");
        assert!(status.success(), "client {n} failed: {status:?}");
        assert_eq!(reader.join().unwrap(), format!("appended {APPENDS}"));
    }
    let out = Command::new(CLIENT)
        .args(["--vs", &vs, "get", "log"])
        .output()
        .expect("kvclient get");
    assert!(out.status.success());
    let log = String::from_utf8(out.stdout).unwrap();
    let tags: Vec<_> = (0..CLIENTS).map(|n| (format!("c{n}"), APPENDS)).collect();
    check_appends(log.trim_end(), &tags);

    // Bad command lines fail with a one-line error and a non-zero status.
    let out = Command::new(CLIENT)
        .args(["--vs", "not-an-address", "get", "k"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(SERVER).args(["--bogus"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn mixed_clients_check_their_history_for_linearizability() {
    let (_vs_proc, vs) = start(VS, &["--listen", "127.0.0.1:0", "--ping-interval-ms", "20"]);
    let _servers: Vec<_> = (0..2).map(|_| start_server(&vs, "127.0.0.1:0").0).collect();
    let out = Command::new(CLIENT)
        .args(["--vs", &vs, "--timeout-ms", "30000", "mixed"])
        .args(["--clients", "3", "--ops", "15", "--keys", "2", "--progress"])
        .output()
        .expect("kvclient mixed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 45);
    // 45 operations and one read of each key.
    assert!(
        text.contains("linearizable 47 operations on 2 keys"),
        "{text}"
    );

    // With its stop file there, a client starts nothing more: the values the first run
    // left, read before and after.
    let stop = std::env::temp_dir().join(format!("kv-stop-{}", std::process::id()));
    std::fs::write(&stop, b"").unwrap();
    let out = Command::new(CLIENT)
        .args(["--vs", &vs, "mixed", "--stop-file"])
        .arg(&stop)
        .output()
        .expect("kvclient mixed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("linearizable 4 operations"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(CLIENT)
        .args(["--vs", &vs, "append-many", "--key", "k", "--tag", "t"])
        .args(["--count", "5", "--stop-file"])
        .arg(&stop)
        .output()
        .expect("kvclient append-many");
    let _ = std::fs::remove_file(&stop);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "appended 0");
}
