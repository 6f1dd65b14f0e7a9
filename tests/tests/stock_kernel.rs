//! The stock Debian cloud kernel on the deterministic machine (user-space PIC/PIT, no
//! in-kernel irqchip, virtio over PCI). Booting it takes minutes on hosts whose KVM
//! emulates kernel mode, so the suite boots it once with its network card (a TAP on
//! simulated host A) and two disks (ext4 made by mkfs, one read-only), snapshotting at the
//! shell prompt with the key/value service running; beside it, the bzImage form starts
//! until the kernel prints its command line. Everything else restores that snapshot in new processes, on other TAPs and
//! copies of the disks (`stock/`).
//!
//! The image comes from `guest-images/stock/build.sh`, and the `ftvm` binary from the
//! workspace's build; `scripts/test.sh` makes both first.

mod stock;

use ftvm_e2e::stock::{image, StockDisks};
use ftvm_e2e::{ftvm_binary, ftvm_command, ConsoleVmm, Hosts};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a boot printed and when its marker line appeared.
struct Boot {
    stdout: String,
    stderr: String,
    status: Option<i32>,
    marker_at: Option<Duration>,
    /// How the run ended, for a failure's message: the exit, the kill at the marker, or
    /// the limit (with when the console last printed, to tell slow from stuck).
    ending: String,
}

/// Run ftvm with its console on pipes (stdin kept open: the guest's shell would otherwise
/// see the end of its input), timing the console's `marker`; with `stop_at_marker`, kill
/// it once the marker's line is complete. Give up after `limit`.
fn run_timed(cmd: Command, marker: &str, stop_at_marker: bool, limit: Duration) -> Boot {
    let started = Instant::now();
    let mut vm = ConsoleVmm::spawn(cmd);
    let mut marker_at = None;
    let (mut printed, mut last_print) = (0, Duration::ZERO);
    let (status, ending) = loop {
        let out = vm.stdout();
        if out.len() != printed {
            (printed, last_print) = (out.len(), started.elapsed());
        }
        // To stop there, the marker's whole line: the console prints it a few bytes at a
        // time (seen: the kill cut "Kernel command line:" off before the command line).
        let seen = out
            .find(marker)
            .is_some_and(|i| !stop_at_marker || out[i..].contains('\n'));
        if marker_at.is_none() && seen {
            marker_at = Some(started.elapsed());
            if stop_at_marker {
                vm.kill();
                break (None, "killed at its marker".to_owned());
            }
        }
        if let Some(s) = vm.try_wait() {
            let ending = format!("exited after {:.0} s", started.elapsed().as_secs_f64());
            break (Some(s), ending);
        }
        if started.elapsed() > limit {
            vm.kill();
            let ending = format!(
                "killed at the {} s limit; its console last printed at {:.0} s",
                limit.as_secs(),
                last_print.as_secs_f64()
            );
            break (None, ending);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Boot {
        stdout: vm.stdout(),
        stderr: vm.stderr(),
        status,
        marker_at,
        ending,
    }
}

/// The ELF boot took 11 to 20 minutes here with its NIC and disks; in CI, beside a cold
/// build of the fuzz targets and the other tests, once more than 30 (killed at 1,800 s
/// while its command ran). The limit only guards against a hung boot.
const BOOT_LIMIT: Duration = Duration::from_secs(2700);
/// The bzImage's decompressor (in the emulated kernel mode) and the kernel's first lines:
/// 251 s here beside the ELF boot.
const BZIMAGE_LIMIT: Duration = Duration::from_secs(600);

#[test]
fn stock_kernel_boots_with_nic_and_disks_and_everything_restores_from_its_snapshot() {
    ftvm_e2e::require_kvm_and_root();
    let dir = std::env::temp_dir().join(format!("ftvm-stock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hosts = Hosts::up("stock");
    // While working on the steps below by hand, FTVM_STOCK_KEEP=DIR keeps the snapshot
    // and its disks in DIR and reuses them on the next run instead of booting (the suite
    // never sets it: it boots once per run).
    let keep = std::env::var_os("FTVM_STOCK_KEEP").map(std::path::PathBuf::from);
    let base = keep.clone().unwrap_or_else(|| dir.clone());
    let disks = StockDisks {
        data: base.join("snapshot-disks/data.img"),
        read_only: base.join("snapshot-disks/ro.img"),
    };
    let snap = base.join("snap");
    if keep.is_some() && snap.join("manifest.json").exists() {
        eprintln!("FTVM_STOCK_KEEP: reusing {} (no boot)", snap.display());
    } else {
        let _ = std::fs::remove_dir_all(&snap);
        let t = Instant::now();
        boot_and_snapshot(&hosts, &base, &snap, keep.is_none());
        eprintln!("stock step boots: {:.0} s", t.elapsed().as_secs_f64());
    }
    // FTVM_STOCK_STEPS=failover,... (by hand, with FTVM_STOCK_KEEP) runs only those steps.
    let only = std::env::var("FTVM_STOCK_STEPS").ok();
    let step = |name: &str, run: &dyn Fn()| {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|s| s == name))
        {
            return;
        }
        let t = Instant::now();
        run();
        eprintln!("stock step {name}: {:.0} s", t.elapsed().as_secs_f64());
    };
    step("serve", &|| {
        stock::serve::restored_guest_serves_network_and_disks(&hosts, &snap, &disks, &dir)
    });
    step("persist", &|| {
        stock::persist::written_files_survive_power_off_and_restore(&hosts, &snap, &disks, &dir)
    });
    step("record", &|| {
        stock::record::recorded_io_replays_without_a_tap(&hosts, &snap, &disks, &dir)
    });
    step("failover", &|| {
        stock::failover::clients_disk_and_console_survive_power_losses(&hosts, &snap, &disks, &dir)
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The two boots, side by side: the ELF kernel with its NIC on host A's TAP and both
/// disks (made in `base`), snapshotted at the shell into `snap`; the bzImage to the
/// kernel's command line (skipped only by hand, under FTVM_STOCK_KEEP).
fn boot_and_snapshot(
    hosts: &Hosts,
    base: &std::path::Path,
    snap: &std::path::Path,
    with_bzimage: bool,
) {
    let vmlinux = image("vmlinux");
    let bzimage = image("bzImage");
    let initrd = image("initramfs.cpio");
    // The snapshot's own disks: kept as they were when it was taken, copied for each VM.
    let disks = StockDisks::make(&base.join("snapshot-disks"));

    let (elf, bz) = std::thread::scope(|s| {
        let elf = s.spawn(|| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &format!("{}-a", hosts.name)])
                .arg(ftvm_binary())
                .args(["run", "--kernel"])
                .arg(&vmlinux)
                .arg("--initrd")
                .arg(&initrd)
                .args(["--net", "tap=tap0"])
                .args(disks.args())
                .arg("--cmdline")
                .arg(format!(
                    "ftvm.disk=/dev/vda ftvm.ip={}/24 -- echo first-$((6*7)); cat /proc/interrupts; kv-init service",
                    ftvm_e2e::stock::GUEST_ADDR
                ))
                .args(["--snapshot-on", "ftvm-init: shell", "--snapshot-dir"])
                .arg(snap)
                .arg("--exit-after-snapshot");
            run_timed(cmd, "ftvm-init: ready", false, BOOT_LIMIT)
        });
        let bz = s.spawn(|| {
            if !with_bzimage {
                return None;
            }
            // Only to the kernel's command line: the decompressor ran, the kernel was
            // entered with its boot parameters. Booting it further would take a second
            // core from the ELF boot for 20 minutes to show the same kernel again.
            let mut cmd = ftvm_command();
            cmd.args(["run", "--kernel"])
                .arg(&bzimage)
                .arg("--initrd")
                .arg(&initrd)
                .args(["--cmdline", "ftvm.bzimage=yes"]);
            Some(run_timed(cmd, "Kernel command line:", true, BZIMAGE_LIMIT))
        });
        (elf.join().unwrap(), bz.join().unwrap())
    });

    // ELF boot: /init loaded the virtio modules, configured eth0, mounted the data disk,
    // ran the command (the key/value service among it); the clock is not the TSC; the
    // PIT's interrupts (IRQ 0 through the XT-PIC, i.e. our user-space PIC) arrived.
    let both = format!("{}\n{}", elf.stdout, elf.stderr);
    assert_eq!(
        elf.status,
        Some(0),
        "ELF boot failed ({}; 'ftvm-init: ready' after {:?}):\n{both}",
        elf.ending,
        elf.marker_at
    );
    let ready = elf
        .stdout
        .lines()
        .find(|l| l.contains("ftvm-init: ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{both}"));
    assert!(!ready.contains("clocksource tsc"), "{ready}");
    assert!(ready.contains("jiffies"), "{ready}");
    for want in [
        "first-42",
        "ftvm-init: mounted /dev/vda at /mnt",
        "ftvm-init: eth0 10.77.0.100/24",
        "kv-init: service on 10.77.0.100",
        "snapshot saved to",
    ] {
        assert!(both.contains(want), "no '{want}':\n{both}");
    }
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

    eprintln!(
        "stock kernel: to /init {:.0} s (ELF, with NIC and disks); PIT ticks by then {ticks}",
        elf.marker_at.unwrap_or_default().as_secs_f64()
    );
    eprintln!("ELF: {}", elf.stderr.lines().last().unwrap_or(""));
    // bzImage: decompressed and entered, the command line passed.
    if let Some(bz) = bz {
        let line = bz
            .stdout
            .lines()
            .find(|l| l.contains("Kernel command line:"))
            .unwrap_or_else(|| panic!("bzImage boot:\n{}\n{}", bz.stdout, bz.stderr));
        assert!(line.contains("ftvm.bzimage=yes"), "{line}");
        assert!(bz.stdout.contains("Linux version 6."), "{}", bz.stdout);
        eprintln!(
            "bzImage: to the kernel's command line {:.0} s (beside the ELF boot)",
            bz.marker_at.unwrap_or_default().as_secs_f64()
        );
    }
}
