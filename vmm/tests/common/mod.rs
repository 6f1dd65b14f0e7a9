//! Helpers shared by the integration tests: they start the real `ftvm` binary on KVM.

#![allow(dead_code)]

pub mod net_guest;
pub mod pair;
pub mod tap;

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Tests that boot VMs need /dev/kvm; without it they fail loudly, never skip.
pub fn require_kvm() {
    let kvm = std::path::Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "/dev/kvm is missing: these tests boot real VMs and need KVM on this host"
    );
}

pub fn guest(name: &str) -> &'static str {
    ftvm_test_guests::guest(name).unwrap_or_else(|| panic!("no tiny guest called {name}"))
}

pub fn ftvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftvm"))
}

/// Run ftvm with `args` and `input` on stdin; give up (and fail) after a minute.
pub fn run_ftvm(args: &[&str], input: &[u8]) -> Output {
    let mut child = ftvm()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ftvm");
    let mut stdin = child.stdin.take().expect("stdin");
    // A VMM that refuses its arguments exits before reading its input: a closed pipe is
    // then part of the outcome under test, not a failure of the harness.
    if let Err(e) = stdin.write_all(input) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write guest input: {e}"
        );
    }
    drop(stdin);
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(120));
        // SAFETY: kill(2) passes no memory of ours, so the call is sound for any pid. The
        // pid is the VMM we started (once reaped, its number could in principle be reused
        // by the time this fires).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().expect("wait for ftvm");
    drop(watchdog);
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run a tiny guest and return its output, asserting the exit status.
pub fn run_guest(name: &str, extra: &[&str], input: &[u8], status: i32) -> Output {
    require_kvm();
    let mut args = vec!["run", "--kernel", guest(name)];
    if !extra.contains(&"--mem") {
        args.extend_from_slice(&["--mem", "16"]);
    }
    args.extend_from_slice(extra);
    let out = run_ftvm(&args, input);
    assert_eq!(
        out.status.code(),
        Some(status),
        "guest {name}: status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}
