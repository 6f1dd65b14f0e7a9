//! The mission's story on the stock kernel: a primary on host A restored from the
//! snapshot (its NIC on A's TAP, its own copy of the disks), a backup on host B joining
//! by state transfer (its own TAP and copies), the key/value service in the guest serving
//! three clients on the client host, a shell loop printing numbers. Host A loses power
//! mid-run (its cable cut, then its VMM killed). The backup goes live; the clients carry
//! on over the same TCP connections; every append lands exactly once, in each client's
//! order; the console shows every number once, in order; the live guest powers off when
//! told.

use super::*;

const CLIENTS: [&str; 3] = ["c0", "c1", "c2"];
const APPENDS: u64 = 30;

pub fn kv_clients_and_console_survive_a_power_loss(
    hosts: &Hosts,
    snap: &Path,
    disks: &StockDisks,
    dir: &Path,
) {
    let shared = hosts.shared();
    let key = ftvm_e2e::keygen(&shared.join(".."));
    let listen = format!("{}:7000", Hosts::addr("a"));
    let common = |role: &str| -> Vec<String> {
        [
            role,
            "--shared-dir",
            shared.to_str().unwrap(),
            "--name",
            "stock",
        ]
        .into_iter()
        .chain(["--key-file", &key, "--net", "tap=tap0"])
        .map(String::from)
        .collect()
    };
    let mut args = common("primary");
    args.extend(["--listen".into(), listen.clone()]);
    args.extend(["--restore".into(), snap.display().to_string()]);
    args.extend(disks.copy_to(&dir.join("primary")).args());
    let mut primary = hosts.console("a", &args);
    let mut args = common("backup");
    args.extend(["--primary".into(), listen]);
    // The backup's copies are overwritten by the state transfer: any image of the size.
    args.extend(disks.copy_to(&dir.join("backup")).args());
    let t = Instant::now();
    while !primary.stderr().contains("waiting for a backup") {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{}",
            primary.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut backup = hosts.console("b", &args);
    while !primary.stderr().contains("protected:") {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no protection:\n{}\n{}",
            primary.stderr(),
            backup.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The clients: appends with their progress, to files.
    let kvclient = ftvm_e2e::top().join("build/kv/bin/kvclient");
    let vs = format!("{GUEST_ADDR}:7000");
    let clients: Vec<_> = CLIENTS
        .iter()
        .map(|tag| {
            let out = dir.join(format!("{tag}.out"));
            let file = std::fs::File::create(&out).expect("client output");
            let child = Command::new("ip")
                .args(["netns", "exec", &format!("{}-client", hosts.name)])
                .arg(&kvclient)
                // Every frame the guest sends waits for the backup's acknowledgement, and the
                // stock backup replays about a second behind here: a call takes seconds.
                .args([
                    "--vs",
                    &vs,
                    "--timeout-ms",
                    "0",
                    "--rpc-timeout-ms",
                    "20000",
                ])
                .args(["append-many", "--key", "log", "--tag", tag, "--progress"])
                .args(["--count", &APPENDS.to_string()])
                .stdout(file.try_clone().expect("dup"))
                .stderr(file)
                .spawn()
                .expect("start kvclient");
            (child, out)
        })
        .collect();
    let progress = |n: u64| {
        clients.iter().all(|(_, out)| {
            std::fs::read_to_string(out)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("ok "))
                .count() as u64
                >= n
        })
    };
    primary.type_line(
        "i=0; while [ $i -lt 60 ]; do echo n-$i; i=$((i+1)); sleep 0.5; done; echo loop-done",
    );
    let console = shared.join("stock.console");
    let read = || {
        String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).replace("\r\n", "\n")
    };
    let has_line = |text: &str, line: &str| {
        text.lines()
            .any(|l| l.trim_start_matches("# ").trim_end() == line)
    };
    // A different kill moment each run (printed, to reproduce), once every client has
    // some appends done.
    let kill_after = 2 + std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 5);
    let kill_line = format!("n-{kill_after}");
    let t = Instant::now();
    while !(has_line(&read(), &kill_line) && progress(2)) {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no {kill_line} or no client progress:\n{}\n{}",
            read(),
            primary.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done: Vec<usize> = clients
        .iter()
        .map(|(_, out)| {
            std::fs::read_to_string(out)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("ok "))
                .count()
        })
        .collect();
    eprintln!(
        "stock failover: host A loses power at {kill_line}, the clients' appends done: {done:?} of {APPENDS} each"
    );
    hosts.cut("a");
    primary.kill();
    let killed = Instant::now();
    while !backup.stderr().contains("live at exit") {
        assert!(
            killed.elapsed() < Duration::from_secs(300),
            "the backup did not go live:\n{}",
            backup.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let live_after = killed.elapsed();

    // Every client finishes on the live backup, over the connections it had.
    for (mut child, out) in clients {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if t.elapsed() > Duration::from_secs(600) {
                let _ = child.kill();
                panic!(
                    "kvclient still running:\n{}\n{}",
                    std::fs::read_to_string(&out).unwrap_or_default(),
                    backup.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(status.success(), "kvclient: {text}\n{}", backup.stderr());
        assert!(text.contains(&format!("appended {APPENDS}")), "{text}");
    }
    let (ok, value) = hosts.exec(
        "client",
        kvclient.to_str().unwrap(),
        &["--vs", &vs, "--timeout-ms", "120000", "get", "log"],
        Duration::from_secs(180),
    );
    assert!(ok, "kvclient get: {value}");
    for tag in CLIENTS {
        let mine: Vec<&str> = value
            .trim()
            .split(';')
            .filter(|e| e.split('.').next() == Some(tag))
            .collect();
        let want: Vec<String> = (0..APPENDS).map(|i| format!("{tag}.{i}")).collect();
        assert_eq!(
            mine, want,
            "{tag}'s appends, exactly once and in order: {value}"
        );
    }

    // The console: the loop's numbers once each, in order, no hole; then power-off.
    let t = Instant::now();
    while !has_line(&read(), "loop-done") {
        assert!(t.elapsed() < Duration::from_secs(300), "{}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    backup.type_line("exit 0");
    assert_eq!(
        backup.wait(Duration::from_secs(300)),
        Some(0),
        "{}",
        backup.stderr()
    );
    let text = read();
    let numbers: Vec<&str> = text
        .lines()
        .map(|l| l.trim_start_matches("# ").trim_end())
        .filter(|l| l.starts_with("n-"))
        .collect();
    let want: Vec<String> = (0..60).map(|i| format!("n-{i}")).collect();
    assert_eq!(
        numbers,
        want,
        "console:\n{text}\nbackup:\n{}",
        backup.stderr()
    );
    assert!(!text.contains('\0'), "a hole in the console stream");
    assert!(text.contains("powering off with status 0"), "{text}");
    let be = backup.stderr();
    assert!(be.contains("won epoch 2"), "{be}");
    eprintln!(
        "stock failover with the key/value service: {} clients x {APPENDS} appends exactly \
         once; live {:.0} ms after the kill",
        CLIENTS.len(),
        live_after.as_secs_f64() * 1000.0
    );
    for line in be.lines().filter(|l| {
        l.contains("state transfer") || l.contains("live at") || l.contains("output rule")
    }) {
        eprintln!("  backup: {line}");
    }
}
