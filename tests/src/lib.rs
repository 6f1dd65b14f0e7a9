//! End-to-end tests of ftvm on simulated hosts: `scripts/hosts.sh` makes host A, host B and
//! a client host in network namespaces joined by a LAN bridge, with a shared directory;
//! the tests start real `ftvm` VMMs on those hosts (`ip netns exec`), cut a host's cable,
//! kill its VMM, and watch what the other host and the observers see.
//!
//! Each test makes its own set of hosts (its own namespaces and LAN), so tests can run in
//! parallel; the hosts are removed when the [`Hosts`] value is dropped, even on failure.
//! Needs root (namespaces) and /dev/kvm; without them the tests fail loudly.

// The public API is documented, and CI's clippy (-D warnings) keeps it so.
#![warn(missing_docs)]

pub mod capture;
pub mod console;
pub mod stock;

pub use console::ConsoleVmm;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository's top directory.
pub fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `ftvm` binary of this build (the workspace's test run builds it first).
pub fn ftvm_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| top().join("target"));
    let bin = target.join("debug").join("ftvm");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p ftvm; scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A command running this build's `ftvm` on the machine itself (no simulated host).
pub fn ftvm_command() -> Command {
    Command::new(ftvm_binary())
}

/// The ELF of the tiny test guest called `name` (`ftvm-test-guests`); panics if none.
pub fn guest(name: &str) -> &'static str {
    ftvm_test_guests::guest(name).unwrap_or_else(|| panic!("no tiny guest called {name}"))
}

/// The simulated machines need KVM and root; without them, fail loudly.
pub fn require_kvm_and_root() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: these tests run real VMs"
    );
    let uid = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "these tests make network namespaces and need root"
    );
}

/// The peer timeout of [`Hosts::protected_pair`]: failures are seen by silence this long.
/// One second, as the stock pairs use: with 300 ms the echo pair's primary, beside the
/// stock boot in the suite, twice counted a starved backup lost and went on alone.
pub const PAIR_PEER_TIMEOUT_MS: &str = "1000";

/// One set of simulated hosts (`scripts/hosts.sh up NAME`), removed on drop.
pub struct Hosts {
    /// The set's name, `e2e<pid>-<tag>`: its namespaces are `<name>-<host>`, its files
    /// in `/tmp/<name>`.
    pub name: String,
}

impl Hosts {
    /// Makes a new set named after this process and `tag`; panics if that fails.
    pub fn up(tag: &str) -> Self {
        let name = format!("e2e{}-{tag}", std::process::id());
        let hosts = Self { name };
        hosts.script(&["up"]);
        hosts
    }

    fn script(&self, args: &[&str]) {
        let mut cmd = Command::new(top().join("scripts/hosts.sh"));
        cmd.args(args).arg(&self.name);
        let out = run_with_deadline(cmd, Duration::from_secs(120));
        assert!(
            out.0,
            "scripts/hosts.sh {args:?} {} failed:\n{}",
            self.name, out.1
        );
    }

    /// The shared storage both VM hosts see.
    pub fn shared(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/{}/shared", self.name))
    }

    /// A host's address on the LAN: "a", "b" or "client".
    pub fn addr(host: &str) -> &'static str {
        match host {
            "a" => "10.77.0.1",
            "b" => "10.77.0.2",
            "client" => "10.77.0.10",
            other => panic!("no host {other}"),
        }
    }

    /// Unplug a host's cable (both directions at once).
    pub fn cut(&self, host: &str) {
        self.script_host("cut", host);
    }

    /// Plug a host's cable back in.
    pub fn heal(&self, host: &str) {
        self.script_host("heal", host);
    }

    /// Break only the channel between hosts A and B: both stay on the LAN.
    pub fn split(&self) {
        let mut cmd = Command::new(top().join("scripts/hosts.sh"));
        cmd.args(["split", &self.name]);
        let out = run_with_deadline(cmd, Duration::from_secs(30));
        assert!(out.0, "hosts.sh split failed:\n{}", out.1);
    }

    fn script_host(&self, action: &str, host: &str) {
        let mut cmd = Command::new(top().join("scripts/hosts.sh"));
        cmd.args([action, host, &self.name]);
        let out = run_with_deadline(cmd, Duration::from_secs(30));
        assert!(out.0, "hosts.sh {action} {host} failed:\n{}", out.1);
    }

    /// A pair of VM `vm` running `guest`: its primary on host A (listening on A's
    /// address), its backup on host B, a key of their own, a 1 s peer timeout, and
    /// `extra` arguments for both (a TAP, say). Returned once the backup has joined.
    pub fn protected_pair(&self, vm: &str, guest: &str, extra: &[&str]) -> (Vmm, Vmm) {
        let shared = self.shared();
        let key = keygen(&shared.join(".."));
        let shared = shared.to_str().expect("utf-8");
        let listen = format!("{}:7000", Self::addr("a"));
        let common = [
            "--shared-dir",
            shared,
            "--name",
            vm,
            "--peer-timeout",
            PAIR_PEER_TIMEOUT_MS,
            "--key-file",
            &key,
        ];
        let mut args = vec!["primary", "--listen", &listen];
        args.extend(common);
        args.extend(["--kernel", guest, "--mem", "16"]);
        args.extend(extra);
        let mut primary = self.ftvm("a", &args);
        primary.wait_for("waiting for a backup", Duration::from_secs(30));
        let mut args = vec!["backup", "--primary", &listen];
        args.extend(common);
        args.extend(extra);
        let backup = self.ftvm("b", &args);
        primary.wait_for("protected:", Duration::from_secs(60));
        (primary, backup)
    }

    /// `ftvm ARGS` on `host` with its console on pipes, for a test to type into.
    pub fn console<S: AsRef<std::ffi::OsStr>>(&self, host: &str, args: &[S]) -> ConsoleVmm {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-{host}", self.name)])
            .arg(ftvm_binary())
            .args(args);
        ConsoleVmm::spawn(cmd)
    }

    /// Run `program ARGS` on `host` to completion within `limit`: (success, its stdout
    /// and stderr).
    pub fn exec(
        &self,
        host: &str,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> (bool, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-{host}", self.name), program])
            .args(args);
        run_with_deadline(cmd, limit)
    }

    /// `ftvm ARGS` on `host`, its stderr collected.
    pub fn ftvm(&self, host: &str, args: &[&str]) -> Vmm {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-{host}", self.name)])
            .arg(ftvm_binary())
            .args(args);
        Vmm::spawn(cmd)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(top().join("scripts/hosts.sh"))
            .args(["down", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Run `cmd` to completion within `limit`: (success, stdout+stderr).
fn run_with_deadline(mut cmd: Command, limit: Duration) -> (bool, String) {
    let out = PathBuf::from(format!(
        "/tmp/ftvm-e2e-cmd-{}-{:?}.out",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&out).expect("command output file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("start command");
    let t = Instant::now();
    let ok = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.success();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (ok, text)
}

/// A VMM process on a simulated host.
pub struct Vmm {
    /// The VMM's process.
    pub child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Vmm {
    /// Start `cmd` (an ftvm command line) with its stderr collected.
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ftvm");
        Self::from_child(child)
    }

    /// A started VMM whose stderr is a pipe: collect it.
    pub(crate) fn from_child(mut child: Child) -> Self {
        let stderr = console::collect(child.stderr.take().expect("stderr piped"));
        Self { child, stderr }
    }

    /// Its exit status once it has ended (-1 for a signal), without waiting; its last
    /// words are collected by then.
    pub fn try_wait(&mut self) -> Option<i32> {
        let status = self.child.try_wait().expect("wait")?;
        std::thread::sleep(Duration::from_millis(50));
        Some(status.code().unwrap_or(-1))
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Until stderr contains `text`; panics after `limit` or if the VMM exits first.
    pub fn wait_for(&mut self, text: &str, limit: Duration) {
        self.wait_for_nth(text, 1, limit);
    }

    /// Until stderr contains `text` `n` times.
    pub fn wait_for_nth(&mut self, text: &str, n: usize, limit: Duration) {
        wait_until(self, &format!("'{text}'"), limit, |v| {
            v.stderr().matches(text).count() >= n
        });
    }

    /// Its exit status (-1 for a signal); panics (killing it) after `limit`.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            if t.elapsed() > limit {
                self.kill();
                panic!("still running after {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ask it to stop (SIGTERM) and give it `grace` to say where its guest was (with
    /// `FTVM_LOG=ftvm::stop=info`, the vCPU's stop line); then SIGKILL. What it said.
    pub fn stop_and_tell(&mut self, grace: Duration) -> String {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let t = Instant::now();
            while t.elapsed() < grace && self.try_wait().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill();
        }
        self.stderr()
    }

    /// SIGKILL, as a power loss would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Watched for Vmm {
    fn ended(&mut self) -> Option<i32> {
        self.try_wait()
    }

    fn said(&self) -> String {
        self.stderr()
    }

    fn last_words(&mut self) -> String {
        self.stop_and_tell(LAST_WORDS_GRACE)
    }
}

/// How long a VMM that a test gives up on has to report where its guest was.
pub const LAST_WORDS_GRACE: Duration = Duration::from_secs(30);

/// A process a test waits on: whether it has ended, and what it said so far.
pub trait Watched {
    /// Its exit status once it has ended (-1 for a signal), without waiting.
    fn ended(&mut self) -> Option<i32>;
    /// What it has said so far, shown when a wait fails.
    fn said(&self) -> String;
    /// When a test gives up on it: what it says once asked to stop.
    fn last_words(&mut self) -> String {
        self.said()
    }
}

/// Until `done(process)`, polled every few milliseconds; panics with what the process said
/// if it ends first or after `limit`.
pub fn wait_until<W: Watched>(w: &mut W, what: &str, limit: Duration, done: impl Fn(&W) -> bool) {
    let t = Instant::now();
    while !done(w) {
        if let Some(s) = w.ended() {
            panic!("exited with {s} before {what}:\n{}", w.said());
        }
        if t.elapsed() >= limit {
            panic!("no {what} within {limit:?}:\n{}", w.last_words());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pair's key in `dir`, made with `ftvm keygen`.
pub fn keygen(dir: &Path) -> String {
    let path = dir.join("pair.key");
    let status = Command::new(ftvm_binary())
        .arg("keygen")
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("ftvm keygen");
    assert!(status.success(), "ftvm keygen failed");
    path.to_str().expect("utf-8 path").to_owned()
}
