//! The mission's story on the stock kernel, three power losses long (FTVM_STOCK_FAILOVERS
//! by hand: as many as asked). A primary on host A
//! restored from the snapshot (its NIC on A's TAP, its own copies of the disks), a backup
//! on host B joining by state transfer. The key/value service in the guest serves clients
//! on the client host: three concurrent clients doing Get, Put and Append on two shared
//! keys (their history is checked for linearizability) and one appending numbered records
//! to a key of its own. In the guest, a shell loop appends numbered records to a file on
//! the ext4 disk, syncs, and prints each number once it is written. And one TCP
//! connection to a sequence-number server in the guest (`seq.rs`), whose replies time the
//! stall each power loss causes.
//!
//! Three times, the host running the guest loses power (its cable cut, then its VMM
//! killed): the backup goes live, the freed host's cable comes back and a new backup
//! joins the live VMM (re-protection, disk contents included). The clients carry on over
//! the TCP connections they had. At the end every acknowledged append is there exactly
//! once, the sequence connection was never reset and got every reply once and in order, the histories are linearizable, the disk file holds every acknowledged record
//! once and in order, the console shows every number once, and after a clean power-off
//! both hosts' disk images are equal byte for byte.

use super::pair::*;
use super::seq::{self, SeqClient};
use super::*;

/// Power losses in one run: three, or FTVM_STOCK_FAILOVERS (by hand, to measure stalls
/// over more).
fn failovers() -> usize {
    std::env::var("FTVM_STOCK_FAILOVERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}
const MIXED_CLIENTS: u64 = 3;
/// The most operations of a client: they run until told to stop, after the last failover.
const MOST: &str = "100000";

pub fn clients_disk_and_console_survive_power_losses(
    hosts: &Hosts,
    snap: &Path,
    disks: &StockDisks,
    dir: &Path,
) {
    let mut pair = Pair::new(hosts, snap, disks, dir);
    let mut live = pair.primary("a");
    let mut backup = pair.backup("b", &live, 1);

    // The records loop, in the background so the console's shell stays free for the
    // `touch` that ends it; typed at the prompt (a line typed before the shell reads can
    // be lost in this guest).
    wait_until("the shell's prompt", 300, &[&live, &backup], || {
        console(hosts).contains("# ")
    });
    live.vmm.type_line(&format!(
        "{}; (i=0; while [ ! -e /tmp/stop ]; do echo r-$i >> /mnt/records; sync; echo n-$i; \
         i=$((i+1)); sleep 0.5; done; echo loop-done) &",
        seq::GUEST_SERVER
    ));
    let stop = dir.join("clients-stop");
    let stop_arg = stop.to_str().expect("utf-8");
    let (mut appender, append_out) = kvclient(
        hosts,
        dir,
        "appends",
        &[
            "append-many",
            "--key",
            "log",
            "--tag",
            "c",
            "--progress",
            "--count",
            MOST,
            "--stop-file",
            stop_arg,
        ],
    );
    let mixed_clients = MIXED_CLIENTS.to_string();
    let (mut mixed, mixed_out) = kvclient(
        hosts,
        dir,
        "mixed",
        &[
            "mixed",
            "--progress",
            "--clients",
            &mixed_clients,
            "--ops",
            MOST,
            "--keys",
            "2",
            "--stop-file",
            stop_arg,
        ],
    );

    let mut sequence = SeqClient::start(hosts, dir, &stop);
    // What the clients and the loop have done: appends, mixed operations, records on the
    // console, sequence replies; each power loss once all have moved on since the last.
    let done = || {
        [
            oks(&append_out),
            oks(&mixed_out),
            numbers(hosts).len(),
            sequence.replies().len(),
        ]
    };
    let moved_on = |since: [usize; 4]| done().iter().zip(since).all(|(n, then)| *n >= then + 3);
    let failovers = failovers();
    let (mut to_live, mut killed_at) = (Vec::new(), Vec::new());
    // A backup the live VMM counted lost before the power loss (no word from it for the
    // peer timeout on this loaded 2-core host; seen once, 2026-12-04): it lost the
    // test-and-set and halted, as it must, and the power loss would find no standby.
    // Such a backup is replaced and the round goes on, twice at most, said on stderr.
    let mut lost_before_cut = 0;
    let mut lost_told = live.vmm.stderr().matches("backup lost").count();
    // Until everything has moved on from now, with the pair `live`, `backup`.
    let progress = |live: &Node, backup: &Node| {
        let since = done();
        wait_until("client and console progress", 600, &[live, backup], || {
            moved_on(since)
        });
    };
    for round in 1..=failovers {
        progress(&live, &backup);
        let said = live.vmm.stderr();
        if said.matches("backup lost").count() > lost_told {
            lost_before_cut += 1;
            assert!(
                lost_before_cut <= 2,
                "the live VMM lost its backup before the power loss {lost_before_cut} times; last:\n--- host {}:\n{said}\n--- host {}:\n{}",
                live.host,
                backup.host,
                backup.vmm.stderr()
            );
            eprintln!(
                "stock failover {round}: host {} lost its backup before the power loss; replaced:\n{}",
                live.host,
                backup.vmm.stderr()
            );
            let host = backup.host;
            backup.vmm.kill();
            let nth = said.matches("protected:").count() + 1;
            backup = pair.backup(host, &live, nth);
            progress(&live, &backup);
        }
        let [appends, ops, records, replies] = done();
        eprintln!(
            "stock failover {round}: host {} loses power with {appends} appends, {ops} mixed operations, {records} records, {replies} sequence replies done",
            live.host,
        );
        killed_at.push(ftvm_e2e::capture::now());
        hosts.cut(live.host);
        live.vmm.kill();
        let killed = Instant::now();
        wait_until("the backup to go live", 300, &[&live, &backup], || {
            backup.vmm.stderr().contains("live at exit")
        });
        to_live.push(killed.elapsed());
        // How it went live: after how many verified exits, with how many divergences.
        let said = backup.vmm.stderr();
        if let Some(line) = said.lines().find(|l| l.contains("live at exit")) {
            eprintln!("stock failover {round}: host {}: {line}", backup.host);
        }
        hosts.heal(live.host);
        let freed = live.host;
        live = backup;
        // Re-protection: a new backup on the freed host joins the live VMM (its first
        // protection as a live VMM).
        backup = pair.backup(freed, &live, 1);
        lost_told = live.vmm.stderr().matches("backup lost").count();
    }

    // Everything moves on with the re-protected pair; then the clients stop and finish.
    let since = done();
    wait_until(
        "progress after the last failover",
        600,
        &[&live, &backup],
        || moved_on(since),
    );
    std::fs::write(&stop, b"").expect("the clients' stop file");
    let mut ended = None;
    wait_until(
        "the sequence client to finish",
        300,
        &[&live, &backup],
        || {
            ended = sequence.ended();
            ended.is_some()
        },
    );
    if let Some(Err(text)) = ended {
        panic!("the sequence client's connection failed: {text}");
    }
    report_stalls(&sequence.replies(), &killed_at);
    finish(&mut appender, &append_out, &[&live, &backup]);
    finish(&mut mixed, &mixed_out, &[&live, &backup]);
    let text = std::fs::read_to_string(&append_out).unwrap_or_default();
    let appended: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("appended "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count from the appender: {text}"));
    let text = std::fs::read_to_string(&mixed_out).unwrap_or_default();
    let verdict = text
        .lines()
        .find(|l| l.starts_with("linearizable "))
        .unwrap_or_else(|| panic!("the mixed clients' history: {text}"));
    eprintln!("stock failover: the mixed clients' history: {verdict}; {appended} appends");
    let (ok, value) = hosts.exec(
        "client",
        kvclient_path().to_str().expect("utf-8"),
        &[
            "--vs",
            &vs(),
            "--timeout-ms",
            "120000",
            "--rpc-timeout-ms",
            "20000",
            "get",
            "log",
        ],
        Duration::from_secs(180),
    );
    assert!(ok, "kvclient get: {value}");
    let want: Vec<String> = (0..appended).map(|i| format!("c.{i}")).collect();
    let got: Vec<&str> = value.trim().split(';').filter(|e| !e.is_empty()).collect();
    assert_eq!(got, want, "the appends, exactly once and in order");

    // End the loop, then power off from the console: both VMMs end, the pair in step.
    live.vmm.type_line("touch /tmp/stop");
    wait_until("the loop to end", 300, &[&live, &backup], || {
        console_lines(&console(hosts)).contains(&"loop-done")
    });
    live.vmm.type_line("exit 0");
    let live_status = live.vmm.wait(Duration::from_secs(300));
    let backup_status = backup.vmm.wait(Duration::from_secs(300));
    let text = console(hosts);
    assert_eq!(live_status, 0, "{}", live.vmm.stderr());
    assert_eq!(backup_status, 0, "{}", backup.vmm.stderr());
    assert!(text.contains("powering off with status 0"), "{text}");
    assert!(!text.contains('\0'), "a hole in the console stream");

    // The console: every number once, in order; the disk: every record once, in order.
    let printed = numbers(hosts);
    let want: Vec<String> = (0..printed.len()).map(|i| format!("n-{i}")).collect();
    assert_eq!(printed, want, "console:\n{text}");
    let records = String::from_utf8_lossy(&live.disks.read_data_file("records")).into_owned();
    let want: Vec<String> = (0..printed.len()).map(|i| format!("r-{i}")).collect();
    assert_eq!(records.lines().collect::<Vec<_>>(), want, "/mnt/records");
    // Both hosts' images, equal once the pair was in step.
    for (mine, theirs) in [
        (&live.disks.data, &backup.disks.data),
        (&live.disks.read_only, &backup.disks.read_only),
    ] {
        let a = std::fs::read(mine).expect("disk image");
        let b = std::fs::read(theirs).expect("disk image");
        assert!(a == b, "{} and {} differ", mine.display(), theirs.display());
    }
    let be = live.vmm.stderr();
    assert!(be.contains(&format!("won epoch {}", failovers + 1)), "{be}");
    let ms: Vec<String> = to_live
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    eprintln!(
        "stock failover: {failovers} power losses, re-protected after each; live after the kill [ms]: {}; {} records on ext4 once each; images equal",
        ms.join(", "),
        printed.len()
    );
    for line in be
        .lines()
        .filter(|l| l.contains("protected:") || l.contains("live at") || l.contains("output rule"))
    {
        eprintln!("  last live VMM: {line}");
    }
}

/// The sequence connection's replies checked (once each, in order) and the stall around
/// each power loss printed, with their median and worst.
fn report_stalls(replies: &[(u64, f64)], killed_at: &[f64]) {
    let longest = seq::check_in_order(replies).unwrap_or_else(|e| panic!("{e}: {replies:?}"));
    let mut stalls: Vec<f64> = killed_at
        .iter()
        .map(|at| {
            seq::stall_around(replies, *at)
                .unwrap_or_else(|| panic!("no sequence replies around the power loss at {at}"))
        })
        .collect();
    let each: Vec<String> = stalls.iter().map(|s| format!("{:.0}", s * 1e3)).collect();
    stalls.sort_by(f64::total_cmp);
    eprintln!(
        "stock failover: one TCP connection, {} replies once each and in order, never reset; stall at each power loss [ms]: {} (median {:.0}, worst {:.0}); longest gap {:.0} ms",
        replies.len(),
        each.join(", "),
        seq::median(&stalls) * 1e3,
        stalls[stalls.len() - 1] * 1e3,
        longest * 1e3
    );
}

fn kvclient_path() -> std::path::PathBuf {
    ftvm_e2e::top().join("build/kv/bin/kvclient")
}

fn vs() -> String {
    format!("{GUEST_ADDR}:7000")
}

/// A client process, killed if the test ends before it does.
struct Client(std::process::Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kvclient on the client host, its output to a file: (process, file).
fn kvclient(hosts: &Hosts, dir: &Path, name: &str, args: &[&str]) -> (Client, std::path::PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let file = std::fs::File::create(&out).expect("client output");
    let child = Command::new("ip")
        .args(["netns", "exec", &format!("{}-client", hosts.name)])
        .arg(kvclient_path())
        // Every frame the guest sends waits for the backup's acknowledgement, and the stock
        // backup replays about a second behind here: a call takes seconds. Never give up.
        .args([
            "--vs",
            &vs(),
            "--timeout-ms",
            "0",
            "--rpc-timeout-ms",
            "20000",
        ])
        .args(args)
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("start kvclient");
    (Client(child), out)
}

/// Waits for a client to end, successfully.
fn finish(client: &mut Client, out: &Path, nodes: &[&Node]) {
    let mut status = None;
    wait_until("a client to finish", 900, nodes, || {
        status = client.0.try_wait().expect("wait");
        status.is_some()
    });
    let text = std::fs::read_to_string(out).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "kvclient: {text}");
}

/// The loop's numbers on the console so far.
fn numbers(hosts: &Hosts) -> Vec<String> {
    console_lines(&console(hosts))
        .into_iter()
        .filter(|l| l.starts_with("n-"))
        .map(String::from)
        .collect()
}
