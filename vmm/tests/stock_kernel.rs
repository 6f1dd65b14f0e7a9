//! The stock Debian cloud kernel on the deterministic machine (user-space PIC/PIT, no
//! in-kernel irqchip). Booting it takes minutes on hosts whose KVM emulates kernel mode, so
//! the suite boots it once as an ELF vmlinux (running a command, then snapshotting at the
//! shell prompt) and once as a bzImage, side by side, and runs everything else from the
//! snapshot in new processes.
//!
//! The image comes from `guest-images/stock/build.sh`, which `scripts/test.sh` runs first.

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn image(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../build/stock")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run guest-images/stock/build.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// What a boot printed and when the ready line appeared.
struct Boot {
    stdout: String,
    stderr: String,
    status: Option<i32>,
    to_init: Option<Duration>,
}

/// Run ftvm, typing `input` one line per prompt of the guest's console loop ("# ", as a
/// person would: lines typed ahead of a running command get lost in the guest), timing the
/// guest's ready line; give up after `limit`.
fn run_timed(args: &[&str], input: &[u8], limit: Duration) -> Boot {
    let started = Instant::now();
    let mut child = ftvm()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ftvm");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    // Keep stdin open: the guest's shell would otherwise not see a late command.
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut ready_at = None;
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut out, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    text.extend_from_slice(&buf[..n]);
                    if ready_at.is_none()
                        && String::from_utf8_lossy(&text).contains("ftvm-init: ready")
                    {
                        ready_at = Some(started.elapsed());
                    }
                }
            }
        }
        (String::from_utf8_lossy(&text).into_owned(), ready_at)
    });
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, to_init) = reader.join().unwrap();
    Boot {
        stdout,
        stderr: err_reader.join().unwrap(),
        status,
        to_init,
    }
}

/// Two boots run side by side on the 2 cores; each took 10 to 15 minutes in CI runs.
const BOOT_LIMIT: Duration = Duration::from_secs(1500);

#[test]
fn stock_kernel_boots_runs_commands_and_restores_from_a_snapshot() {
    require_kvm();
    let vmlinux = image("vmlinux");
    let bzimage = image("bzImage");
    let initrd = image("initramfs.cpio");
    let snap = std::env::temp_dir().join(format!("ftvm-stock-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&snap);

    let (elf, bz) = std::thread::scope(|s| {
        let elf = s.spawn(|| {
            run_timed(
                &[
                    "run",
                    "--kernel",
                    vmlinux.to_str().unwrap(),
                    "--initrd",
                    initrd.to_str().unwrap(),
                    "--cmdline",
                    "-- echo first-$((6*7)); cat /proc/interrupts",
                    "--snapshot-on",
                    "ftvm-init: shell",
                    "--snapshot-dir",
                    snap.to_str().unwrap(),
                    "--exit-after-snapshot",
                ],
                b"",
                BOOT_LIMIT,
            )
        });
        let bz = s.spawn(|| {
            run_timed(
                &[
                    "run",
                    "--kernel",
                    bzimage.to_str().unwrap(),
                    "--initrd",
                    initrd.to_str().unwrap(),
                    "--cmdline",
                    // Input typed before init opens the console is lost, so the command
                    // powers the VM off itself, through the system controller (after a
                    // moment for the tty to send the line it queued).
                    "-- echo bzimage-ok; sleep 1; devmem 0xd0000010 32 7",
                ],
                b"",
                BOOT_LIMIT,
            )
        });
        (elf.join().unwrap(), bz.join().unwrap())
    });

    // ELF boot: /init ran the command; the clock is not the TSC; the PIT's interrupts
    // (IRQ 0 through the XT-PIC, i.e. our user-space PIC) arrived.
    assert_eq!(
        elf.status,
        Some(0),
        "ELF boot failed:\n{}\n{}",
        elf.stdout,
        elf.stderr
    );
    let ready = elf
        .stdout
        .lines()
        .find(|l| l.contains("ftvm-init: ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{}", elf.stdout));
    assert!(!ready.contains("clocksource tsc"), "{ready}");
    assert!(ready.contains("jiffies"), "{ready}");
    assert!(elf.stdout.contains("first-42"), "{}", elf.stdout);
    let timer = elf
        .stdout
        .lines()
        .find(|l| l.contains("XT-PIC") && l.contains("timer"))
        .unwrap_or_else(|| panic!("no PIT timer in /proc/interrupts:\n{}", elf.stdout));
    let ticks: u64 = timer
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ticks > 0, "{timer}");
    assert!(elf.stderr.contains("snapshot saved to"), "{}", elf.stderr);

    // bzImage boot: the same userland, ending with the shell's exit status.
    assert_eq!(
        bz.status,
        Some(7),
        "bzImage boot:\n{}\n{}",
        bz.stdout,
        bz.stderr
    );
    assert!(bz.stdout.contains("bzimage-ok"), "{}", bz.stdout);

    // Restore in a new process and run a second command there.
    let restored = run_timed(
        &["run", "--restore", snap.to_str().unwrap()],
        // One line: lines typed ahead of a running command can get lost in the guest.
        b"echo second-$((7*7)); sleep 1; echo third; cat /proc/uptime; exit 3\n",
        Duration::from_secs(600),
    );
    assert_eq!(
        restored.status,
        Some(3),
        "restore:\n{}\n{}",
        restored.stdout,
        restored.stderr
    );
    assert!(restored.stdout.contains("second-49"), "{}", restored.stdout);
    // Its own line: the typed command line (echoed) contains the word too.
    assert!(
        restored.stdout.lines().any(|l| l.trim() == "third"),
        "{}",
        restored.stdout
    );
    assert!(
        !restored.stdout.contains("ftvm-init: ready"),
        "the restored VM booted again"
    );
    assert!(
        restored.stdout.contains("powering off with status 3"),
        "{}",
        restored.stdout
    );

    // Record a workload from the snapshot (timer ticks across sleeps, console output) and
    // replay it from the log alone.
    let log = snap.with_extension("log");
    let workload = b"for i in 1 2 3; do echo tick-$i; sleep 1; done; cat /proc/uptime; exit 0\n";
    let rec = run_timed(
        &[
            "record",
            "--log",
            log.to_str().unwrap(),
            "--restore",
            snap.to_str().unwrap(),
        ],
        workload,
        Duration::from_secs(600),
    );
    assert_eq!(
        rec.status,
        Some(0),
        "record:\n{}\n{}",
        rec.stdout,
        rec.stderr
    );
    assert!(rec.stdout.contains("tick-3"), "{}", rec.stdout);
    let rep = run_timed(
        &[
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--restore",
            snap.to_str().unwrap(),
        ],
        b"",
        Duration::from_secs(900),
    );
    assert!(
        rep.stderr.contains("matches the recording"),
        "replay:\n{}",
        rep.stderr
    );
    assert_eq!(
        rep.status,
        Some(0),
        "replay:\n{}\n{}",
        rep.stdout,
        rep.stderr
    );
    assert!(rep.stdout.contains("tick-3"), "{}", rep.stdout);
    for line in rec.stderr.lines().chain(rep.stderr.lines()) {
        if line.starts_with("ftvm record:") || line.starts_with("ftvm replay:") {
            eprintln!("{line}");
        }
    }
    let _ = std::fs::remove_file(&log);

    failover_from_the_snapshot(&snap);

    eprintln!(
        "stock kernel: to /init {:.0} s (ELF), {:.0} s (bzImage), both booting side by side; \
         PIT ticks by then {ticks}",
        elf.to_init.unwrap_or_default().as_secs_f64(),
        bz.to_init.unwrap_or_default().as_secs_f64()
    );
    for (name, b) in [("ELF", &elf), ("bzImage", &bz), ("restore", &restored)] {
        eprintln!("{name}: {}", b.stderr.lines().last().unwrap_or(""));
    }
    let _ = std::fs::remove_dir_all(&snap);
}

/// A primary restored from the snapshot, a backup joining it by state transfer, a shell
/// loop printing numbers, SIGKILL of the primary mid-loop: the console stream shows every
/// number once, in order, and the backup, live, runs the guest to its power-off.
fn failover_from_the_snapshot(snap: &Path) {
    let dir = std::env::temp_dir().join(format!("ftvm-stock-ft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let spawn = |args: &[&str]| {
        ftvm()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ftvm")
    };
    let collect = |child: &mut std::process::Child| {
        let mut err = child.stderr.take().unwrap();
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let t = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut err, &mut buf) {
                if n == 0 {
                    break;
                }
                t.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        text
    };
    let wait_for = |text: &std::sync::Arc<std::sync::Mutex<String>>, what: &str, limit: u64| {
        let t = Instant::now();
        while !text.lock().unwrap().contains(what) {
            assert!(
                t.elapsed() < Duration::from_secs(limit),
                "no '{what}':\n{}",
                text.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let key = dir.join("pair.key");
    ftvm::ft::key::ChannelKey::create(&key).expect("make the pair's key");
    let key = key.to_str().unwrap();
    let mut primary = spawn(&[
        "primary",
        "--shared-dir",
        d,
        "--key-file",
        key,
        "--name",
        "stock",
        "--listen",
        &addr,
        "--restore",
        snap.to_str().unwrap(),
    ]);
    let perr = collect(&mut primary);
    wait_for(&perr, "waiting for a backup", 60);
    let mut backup = spawn(&[
        "backup",
        "--shared-dir",
        d,
        "--key-file",
        key,
        "--name",
        "stock",
        "--primary",
        &addr,
    ]);
    let berr = collect(&mut backup);
    wait_for(&perr, "protected:", 300);
    let t = Instant::now();
    primary
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"i=0; while [ $i -lt 60 ]; do echo n-$i; i=$((i+1)); sleep 0.2; done; exit 0\n")
        .unwrap();
    let console = dir.join("stock.console");
    // The guest's tty ends lines with CR LF.
    let read = || {
        String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).replace("\r\n", "\n")
    };
    let has_line = |text: &str, line: &str| {
        text.lines()
            .any(|l| l.strip_prefix("# ").unwrap_or(l) == line)
    };
    // A different kill moment each run, somewhere in the loop (printed, to reproduce).
    let kill_after = 4 + std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 37);
    let kill_line = format!("n-{kill_after}");
    eprintln!("stock failover: killing the primary once the observer sees {kill_line}");
    while !has_line(&read(), &kill_line) {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no {kill_line}:\n{}\n{}",
            read(),
            perr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = primary.kill();
    let _ = primary.wait();
    // The backup must win, go live and run the guest to the end of the loop.
    let killed = Instant::now();
    let mut live_since = None;
    let status = loop {
        if let Some(s) = backup.try_wait().unwrap() {
            break s.code();
        }
        let be = berr.lock().unwrap().clone();
        if live_since.is_none() && be.contains("live at exit") {
            live_since = Some(Instant::now());
        }
        assert!(
            live_since.is_some() || killed.elapsed() < Duration::from_secs(300),
            "the backup did not go live within 300 s of the kill:\n{be}"
        );
        if live_since.is_some_and(|l| l.elapsed() > Duration::from_secs(300)) {
            let _ = backup.kill();
            let _ = backup.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(100));
    let (be, text) = (berr.lock().unwrap().clone(), read());
    assert!(be.contains("won epoch 2"), "{be}");
    assert!(be.contains("live at exit"), "{be}");
    // What the observer saw is the guest's output exactly once, in order, with no hole,
    // across the failover: the whole loop, finished by the live backup.
    // The shell's prompt can land in front of the first line (the command was typed ahead
    // of it).
    let numbers: Vec<&str> = text
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| l.starts_with("n-"))
        .collect();
    let want: Vec<String> = (0..60).map(|i| format!("n-{i}")).collect();
    assert_eq!(numbers, want, "console:\n{text}\nbackup:\n{be}");
    assert!(
        !text.contains('\0'),
        "a hole in the console stream:\n{text:?}"
    );
    assert_eq!(
        status,
        Some(0),
        "the live guest did not power off with status 0 (None: still running 300 s after going live):\n{be}"
    );
    assert!(
        text.contains("powering off with status 0"),
        "console:\n{text}"
    );
    eprintln!(
        "stock failover: killed after {kill_line}; the live backup finished the loop: n-0..n-59 once each, in order"
    );
    for line in be.lines().filter(|l| {
        l.contains("state transfer") || l.contains("live at") || l.contains("output rule")
    }) {
        eprintln!("stock failover, backup: {line}");
    }
    for line in perr
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("protected"))
    {
        eprintln!("stock failover, primary: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
