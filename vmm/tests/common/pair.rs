//! A primary and a backup VMM as child processes: start them, watch their stderr, kill
//! them; shared by the pair tests.

use super::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pair tests' peer timeout. The suite runs them niced, two at a time, beside the
/// stock kernel's boot: with 300 ms, a VMM starved that long was once counted lost (CI,
/// 2026-12-03: two tests' backups went live under a running primary), and with 1 s once
/// more (a backup that took 5.6 s to replay 400 exits). Only the partition test waits
/// for the timeout; the others kill a VMM, which closes its connections at once.
pub const TIMEOUT_MS: &str = "2000";

/// A VMM child process with its stderr collected (the end-to-end tests' own).
pub use ftvm_e2e::Vmm;

/// `ftvm ARGS` as a child process.
pub fn vmm(args: &[&str]) -> Vmm {
    let mut cmd = ftvm();
    cmd.args(args);
    Vmm::spawn(cmd)
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
    primary_of("counter", "counter", dir, port, key, extra)
}

/// A primary of the tiny guest `guest_name`, its VM called `vm_name` in the shared
/// directory, holding the channel key at `key`, with `extra` arguments.
pub fn primary_of(
    vm_name: &str,
    guest_name: &str,
    dir: &Path,
    port: u16,
    key: &str,
    extra: &[&str],
) -> Vmm {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "primary",
        "--shared-dir",
        dir.to_str().unwrap(),
        "--name",
        vm_name,
        "--listen",
        &listen,
        "--key-file",
        key,
        "--kernel",
        guest(guest_name),
        "--mem",
        "16",
    ];
    with_extra(&mut args, extra);
    vmm(&args)
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
    backup_of("counter", dir, primary_port, listen, extra)
}

/// A backup of the VM called `vm_name` in the shared directory, with `extra` arguments.
pub fn backup_of(
    vm_name: &str,
    dir: &Path,
    primary_port: u16,
    listen: Option<u16>,
    extra: &[&str],
) -> Vmm {
    let primary = format!("127.0.0.1:{primary_port}");
    let listen = listen.map(|p| format!("127.0.0.1:{p}"));
    let key = pair_key(dir);
    let mut args = vec![
        "backup",
        "--shared-dir",
        dir.to_str().unwrap(),
        "--name",
        vm_name,
        "--primary",
        &primary,
        "--key-file",
        &key,
    ];
    if let Some(l) = &listen {
        args.extend(["--listen", l]);
    }
    with_extra(&mut args, extra);
    vmm(&args)
}

/// A primary and its joining backup, watched together: a wait that fails shows what both
/// said (a backup that never joined says why only on its own stderr).
struct Joining<'a> {
    primary: &'a mut Vmm,
    backup: &'a mut Vmm,
    since: std::time::Instant,
}

impl ftvm_e2e::Watched for Joining<'_> {
    fn ended(&mut self) -> Option<i32> {
        self.primary.try_wait()
    }

    fn said(&self) -> String {
        format!(
            "{}\n--- the backup, started {:.1} s ago:\n{}",
            self.primary.stderr(),
            self.since.elapsed().as_secs_f64(),
            self.backup.stderr()
        )
    }

    fn last_words(&mut self) -> String {
        let backup_ended = self.backup.child.try_wait().ok().flatten();
        format!(
            "{}\n--- the backup, started {:.1} s ago ({}):\n{}",
            self.primary.last_words(),
            self.since.elapsed().as_secs_f64(),
            backup_ended.map_or("still running".to_owned(), |s| format!("ended: {s}")),
            self.backup.stderr()
        )
    }
}

/// Until the primary says "protected:" for the `n`-th time, with `backup` joining it;
/// panics after `limit` with what both VMMs said.
pub fn wait_protected(primary: &mut Vmm, backup: &mut Vmm, n: usize, limit: Duration) {
    let mut pair = Joining {
        primary,
        backup,
        since: std::time::Instant::now(),
    };
    ftvm_e2e::wait_until(&mut pair, "'protected:'", limit, |p| {
        p.primary.stderr().matches("protected:").count() >= n
    });
}
