//! The stock VM as a primary and backups on the simulated hosts, for the failover step:
//! who runs where, with which disk copies, and the waits on their output.

use super::*;
use ftvm_e2e::ConsoleVmm;
use std::path::PathBuf;

/// The VM's name on the shared storage.
pub const VM: &str = "stock";

/// One VMM of the pair: the host it runs on, its process, its own disk copies.
pub struct Node {
    pub host: &'static str,
    pub vmm: ConsoleVmm,
    pub disks: StockDisks,
}

/// Starts the VMMs of the stock VM on hosts A and B, each listening for a backup on its
/// host's address (so a backup that goes live can be re-protected).
pub struct Pair<'a> {
    pub hosts: &'a Hosts,
    pub snap: &'a Path,
    pub disks: &'a StockDisks,
    pub dir: &'a Path,
    key: String,
    started: u32,
}

impl<'a> Pair<'a> {
    pub fn new(hosts: &'a Hosts, snap: &'a Path, disks: &'a StockDisks, dir: &'a Path) -> Self {
        let key = ftvm_e2e::keygen(&hosts.shared().join(".."));
        Self {
            hosts,
            snap,
            disks,
            dir,
            key,
            started: 0,
        }
    }

    fn args(&self, role: &str, host: &str) -> Vec<String> {
        let shared = self.hosts.shared();
        [role, "--shared-dir", shared.to_str().expect("utf-8")]
            .into_iter()
            .chain(["--name", VM, "--key-file", &self.key, "--net", "tap=tap0"])
            .chain(["--listen", &format!("{}:7000", Hosts::addr(host))])
            .map(String::from)
            .collect()
    }

    /// Copies of the snapshot's disks for the next VMM.
    fn disk_copies(&mut self, host: &str) -> StockDisks {
        self.started += 1;
        self.disks
            .copy_to(&self.dir.join(format!("{host}-{}", self.started)))
    }

    /// The primary on `host`, restored from the snapshot, once it waits for a backup.
    pub fn primary(&mut self, host: &'static str) -> Node {
        let disks = self.disk_copies(host);
        let mut args = self.args("primary", host);
        args.extend(["--restore".into(), self.snap.display().to_string()]);
        args.extend(disks.args());
        let vmm = self.hosts.console(host, &args);
        let node = Node { host, vmm, disks };
        wait_until("the primary to wait for a backup", 120, &[&node], || {
            node.vmm.stderr().contains("waiting for a backup")
        });
        node
    }

    /// A backup on `host` joining `of` (a primary, or a backup that went live), once `of`
    /// says it is protected for the `nth` time. Its disk copies are any images of the
    /// right size: the state transfer overwrites them.
    pub fn backup(&mut self, host: &'static str, of: &Node, nth: usize) -> Node {
        let disks = self.disk_copies(host);
        let mut args = self.args("backup", host);
        args.extend(["--primary".into(), format!("{}:7000", Hosts::addr(of.host))]);
        args.extend(disks.args());
        let lost_before = of.vmm.stderr().matches("backup lost").count();
        let vmm = self.hosts.console(host, &args);
        let node = Node { host, vmm, disks };
        // Protected once both say so: the primary after its last round, the backup once it
        // has checked the epoch and replays (a backup that fails there is lost again).
        wait_until("protection", 600, &[of, &node], || {
            of.vmm.stderr().matches("protected:").count() >= nth
                && node.vmm.stderr().contains("replaying from exit")
        });
        std::thread::sleep(Duration::from_secs(2));
        let said = of.vmm.stderr();
        assert!(
            said.matches("backup lost").count() == lost_before,
            "the new backup on host {host} was lost again:\n--- host {}:\n{said}\n--- host {host}:\n{}",
            of.host,
            node.vmm.stderr()
        );
        node
    }
}

/// Until `done()`; panics after `limit_s` seconds with what `nodes` printed.
pub fn wait_until(what: &str, limit_s: u64, nodes: &[&Node], mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        if t.elapsed() > Duration::from_secs(limit_s) {
            let said: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- host {}:\n{}", n.host, n.vmm.stderr()))
                .collect();
            panic!("waited {limit_s} s for {what}:\n{}", said.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of a client's output file that start with `ok `.
pub fn oks(out: &Path) -> usize {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("ok "))
        .count()
}

/// The VM's console as the shared storage holds it, whichever VMM wrote it.
pub fn console(hosts: &Hosts) -> String {
    let path: PathBuf = hosts.shared().join(format!("{VM}.console"));
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).replace("\r\n", "\n")
}

/// The console's lines without the shell's prompt.
pub fn console_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.trim_start_matches("# ").trim_end())
        .collect()
}
