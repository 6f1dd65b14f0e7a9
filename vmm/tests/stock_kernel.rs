//! The stock Debian cloud kernel on the deterministic machine (user-space PIC/PIT, no
//! in-kernel irqchip, virtio over PCI). Booting it takes minutes on hosts whose KVM
//! emulates kernel mode, so the suite boots it once with its network card (a TAP on
//! simulated host A) and two disks (ext4 made by mkfs, one read-only), snapshotting at the
//! shell prompt with the key/value service running, and once as a plain bzImage, side by
//! side; everything else restores that snapshot in new processes, on other TAPs and
//! copies of the disks (`stock/`).
//!
//! The image comes from `guest-images/stock/build.sh`, which `scripts/test.sh` runs first.

mod common;
mod stock;
use common::*;

use ftvm_e2e::stock::{image, StockDisks};
use ftvm_e2e::{ConsoleVmm, Hosts};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a boot printed and when the ready line appeared.
struct Boot {
    stdout: String,
    stderr: String,
    status: Option<i32>,
    to_init: Option<Duration>,
}

/// Run ftvm with its console on pipes (stdin kept open: the guest's shell would otherwise
/// see the end of its input), timing the guest's ready line; give up after `limit`.
fn run_timed(cmd: Command, limit: Duration) -> Boot {
    let started = Instant::now();
    let mut vm = ConsoleVmm::spawn(cmd);
    let mut to_init = None;
    let status = loop {
        if to_init.is_none() && vm.stdout().contains("ftvm-init: ready") {
            to_init = Some(started.elapsed());
        }
        if let Some(s) = vm.try_wait() {
            break Some(s);
        }
        if started.elapsed() > limit {
            vm.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Boot {
        stdout: vm.stdout(),
        stderr: vm.stderr(),
        status,
        to_init,
    }
}

/// Two boots run side by side on the 2 cores; each took 10 to 15 minutes in CI runs.
const BOOT_LIMIT: Duration = Duration::from_secs(1500);

#[test]
fn stock_kernel_boots_with_nic_and_disks_and_everything_restores_from_its_snapshot() {
    require_kvm();
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
    step("record", &|| {
        stock::record::recorded_io_replays_without_a_tap(&hosts, &snap, &disks, &dir)
    });
    step("failover", &|| {
        stock::failover::clients_disk_and_console_survive_three_power_losses(
            &hosts, &snap, &disks, &dir,
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The two boots, side by side: the ELF kernel with its NIC on host A's TAP and both
/// disks (made in `base`), snapshotted at the shell into `snap`; the bzImage plain
/// (skipped only by hand, under FTVM_STOCK_KEEP).
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
                .arg(env!("CARGO_BIN_EXE_ftvm"))
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
            run_timed(cmd, BOOT_LIMIT)
        });
        let bz = s.spawn(|| {
            if !with_bzimage {
                return None;
            }
            let mut cmd = ftvm();
            cmd.args(["run", "--kernel"])
                .arg(&bzimage)
                .arg("--initrd")
                .arg(&initrd)
                // Input typed before init opens the console is lost, so the command
                // powers the VM off itself, through the system controller (after a
                // moment for the tty to send the line it queued).
                .args([
                    "--cmdline",
                    "-- echo bzimage-ok; sleep 1; devmem 0xd0000010 32 7",
                ]);
            Some(run_timed(cmd, BOOT_LIMIT))
        });
        (elf.join().unwrap(), bz.join().unwrap())
    });

    // ELF boot: /init loaded the virtio modules, configured eth0, mounted the data disk,
    // ran the command (the key/value service among it); the clock is not the TSC; the
    // PIT's interrupts (IRQ 0 through the XT-PIC, i.e. our user-space PIC) arrived.
    let both = format!("{}\n{}", elf.stdout, elf.stderr);
    assert_eq!(elf.status, Some(0), "ELF boot failed:\n{both}");
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
        elf.to_init.unwrap_or_default().as_secs_f64()
    );
    eprintln!("ELF: {}", elf.stderr.lines().last().unwrap_or(""));
    // bzImage boot: the same userland, ending with the shell's exit status.
    if let Some(bz) = bz {
        assert_eq!(
            bz.status,
            Some(7),
            "bzImage boot:\n{}\n{}",
            bz.stdout,
            bz.stderr
        );
        assert!(bz.stdout.contains("bzimage-ok"), "{}", bz.stdout);
        eprintln!(
            "bzImage: to /init {:.0} s (booting beside the ELF); {}",
            bz.to_init.unwrap_or_default().as_secs_f64(),
            bz.stderr.lines().last().unwrap_or("")
        );
    }
}
