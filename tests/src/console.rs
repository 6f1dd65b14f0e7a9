//! A VMM whose guest console a test types into and reads: the stock kernel's shell loop
//! (`# ` prompt, one command line at a time). Lines typed ahead of a running command can
//! get lost inside that guest, so [`ConsoleVmm::run`] types one line and waits for the
//! marker it ends with before the next.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ConsoleVmm {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    steps: u32,
}

/// What `pipe` gives, gathered by a thread of its own as it comes.
pub(crate) fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl ConsoleVmm {
    /// Start `cmd` (an ftvm command line) with its console on pipes.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ftvm");
        let stdin = child.stdin.take();
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdin,
            stdout,
            stderr,
            steps: 0,
        }
    }

    /// What the guest printed so far; the guest's tty ends lines with CR LF.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace("\r\n", "\n")
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn both(&self) -> String {
        format!(
            "--- console:\n{}\n--- ftvm:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Type `line` (a newline is added).
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("type '{line}': {e}\n{}", self.both()));
    }

    /// Until a console line (after the prompt) is exactly `line`; panics after `limit`
    /// or if the VMM exits first.
    pub fn wait_line(&mut self, line: &str, limit: Duration) {
        let t = Instant::now();
        loop {
            if self
                .stdout()
                .lines()
                .any(|l| l.trim_start_matches("# ").trim_end() == line)
            {
                return;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("ftvm exited with {s} before '{line}':\n{}", self.both());
            }
            assert!(
                t.elapsed() < limit,
                "no console line '{line}' within {limit:?}:\n{}",
                self.both()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Type one command line, wait until it has finished (within `limit`) and return what
    /// it printed, with its exit status as the last line (`status N`).
    pub fn run(&mut self, command: &str, limit: Duration) -> String {
        self.steps += 1;
        let marker = format!("ftvm-step-{}-done", self.steps);
        let before = self.stdout().len();
        self.type_line(&format!("{command}; echo status $?; echo {marker}"));
        self.wait_line(&marker, limit);
        let text = self.stdout();
        let new = &text[before.min(text.len())..];
        // Drop the echo of the typed line and the marker.
        new.lines()
            .filter(|l| !l.contains(&marker))
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Type `exit N` and wait for the VMM to end: its exit status.
    pub fn exit(&mut self, status: i32, limit: Duration) -> Option<i32> {
        self.type_line(&format!("exit {status}"));
        self.wait(limit)
    }

    /// The VMM's exit status (None: a signal); panics (killing it) after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(100));
                return s.code();
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("still running after {limit:?}:\n{}", self.both());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a power loss would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ConsoleVmm {
    fn drop(&mut self) {
        self.kill();
    }
}
