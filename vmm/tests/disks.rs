//! Disks: `--disk` gives the guest a virtio-blk function on a PCI bus. The tiny
//! `virtio-blk` guest drives it as a minimal driver would (probe, queue set-up, a write
//! and a read back); record/replay performs the same I/O on a fresh copy of the image and
//! catches a replay over another image; bad disk arguments are one-line errors.

mod common;
use common::*;

use std::path::{Path, PathBuf};

const SECTOR0_MARK: &[u8; 8] = b"HOSTMARK";
const GUEST_PATTERN: &[u8; 8] = b"ftvm-blk";

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ftvm-disks-{}-{name}", std::process::id()))
}

/// A 64 KiB image whose sector 0 starts with `mark`.
fn image(name: &str, mark: &[u8; 8]) -> PathBuf {
    let path = temp(name);
    let mut data = vec![0u8; 64 << 10];
    data[..8].copy_from_slice(mark);
    std::fs::write(&path, data).unwrap();
    path
}

fn sector(path: &Path, n: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[n * 512..(n + 1) * 512].to_vec()
}

fn assert_guest_did_its_io(text: &str) {
    assert!(
        text.contains("virtio-blk: pci 00:01.0 id 0x0000000010421af4"),
        "{text}"
    );
    assert!(
        text.contains("virtio-blk: bar0 0x00000000e0000000 irq 10"),
        "{text}"
    );
    assert!(text.contains("virtio-blk: capacity 128"), "{text}");
    // The completion raised line 10 (slave IRR bit 2) until the ISR read dropped it.
    assert!(
        text.contains(
            "slave irr 0x0000000000000004 isr 0x0000000000000001 irr after 0x0000000000000000"
        ),
        "{text}"
    );
    assert!(
        text.contains("sector 0 starts 0x4b52414d54534f48"),
        "the guest read the host's sector 0: {text}"
    );
    assert!(
        text.contains("virtio-blk: write and read back ok"),
        "{text}"
    );
}

#[test]
fn guest_writes_and_reads_back_a_disk() {
    let img = image("run.img", SECTOR0_MARK);
    let out = run_guest("virtio-blk", &["--disk", img.to_str().unwrap()], b"", 0);
    assert_guest_did_its_io(&stdout(&out));
    assert_eq!(
        sector(&img, 1),
        GUEST_PATTERN.repeat(64),
        "sector 1 on the host"
    );
    let _ = std::fs::remove_file(img);
}

#[test]
fn read_only_disk_refuses_the_write() {
    let img = image("ro.img", SECTOR0_MARK);
    let spec = format!("{},readonly", img.display());
    let out = run_guest("virtio-blk", &["--disk", &spec], b"", 1);
    assert!(
        stdout(&out).contains("virtio-blk: request status not OK"),
        "{}",
        stdout(&out)
    );
    assert_eq!(sector(&img, 1), vec![0u8; 512], "the image is unchanged");
    let _ = std::fs::remove_file(img);
}

#[test]
fn without_disks_there_is_no_pci_bus() {
    // Configuration mechanism #1 reads all ones: no device at 00:01.0.
    let out = run_guest("virtio-blk", &[], b"", 1);
    assert!(
        stdout(&out).contains("id 0x00000000ffffffff"),
        "{}",
        stdout(&out)
    );
}

/// `ftvm ROLE OPTIONS` on the virtio-blk guest with `img` as its disk.
fn run_blk(role: &[&str], img: &Path, options: &[&str]) -> std::process::Output {
    let mut args = role.to_vec();
    let kernel = guest("virtio-blk");
    args.extend_from_slice(&["--kernel", kernel, "--mem", "16"]);
    args.extend_from_slice(&["--disk", img.to_str().unwrap()]);
    args.extend_from_slice(options);
    let out = run_ftvm(&args, b"");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn record_replay(log: &Path, role: &str, img: &Path) -> std::process::Output {
    run_blk(&[role, "--log", log.to_str().unwrap()], img, &[])
}

#[test]
fn replay_repeats_the_disk_io_on_its_own_copy() {
    require_kvm();
    let log = temp("rr.log");
    let recorded = image("rec.img", SECTOR0_MARK);
    let rec = record_replay(&log, "record", &recorded);
    assert_eq!(rec.status.code(), Some(0), "{}", stderr(&rec));
    assert_guest_did_its_io(&stdout(&rec));

    // A fresh copy of the original image: same I/O, same digest, same final image.
    let copy = image("copy.img", SECTOR0_MARK);
    let rep = record_replay(&log, "replay", &copy);
    let err = stderr(&rep);
    assert_eq!(rep.status.code(), Some(0), "{err}");
    assert!(
        err.contains("final digest") && err.contains("matches the recording"),
        "{err}"
    );
    assert!(
        err.contains("diverged 0") || !err.contains("diverged"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&recorded).unwrap()
    );

    // Another image (its sector 0 differs): the replay must not pass.
    let other = image("other.img", b"OTHERIMG");
    let bad = record_replay(&log, "replay", &other);
    let err = stderr(&bad);
    assert!(
        bad.status.code() != Some(0) || !err.contains("matches the recording"),
        "a replay over another image passed: {err}"
    );
    for f in [log, recorded, copy, other] {
        let _ = std::fs::remove_file(f);
    }
}

/// A failed start: exit status 1, one line naming the problem, before any guest ran.
fn assert_refused(extra: &[&str], needle: &str) {
    require_kvm();
    let mut args = vec!["run", "--kernel", guest("virtio-blk"), "--mem", "16"];
    args.extend_from_slice(extra);
    let out = run_ftvm(&args, b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "want one line:\n{err}");
    assert!(
        err.starts_with("ftvm: error: ") && err.contains(needle),
        "{needle:?} in {err}"
    );
    assert!(stdout(&out).is_empty(), "the guest ran: {}", stdout(&out));
}

#[test]
fn bad_disks_are_refused_before_the_guest_starts() {
    let missing = temp("missing.img");
    assert_refused(&["--disk", missing.to_str().unwrap()], "No such file");
    let dir = std::env::temp_dir();
    assert_refused(&["--disk", dir.to_str().unwrap()], "is not a regular file");
    let odd = temp("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    assert_refused(
        &["--disk", odd.to_str().unwrap()],
        "is 1000 bytes, not a multiple of 512",
    );
    assert_refused(&["--disk", "x.img,rw"], "bad --disk 'x.img,rw'");
    let _ = std::fs::remove_file(odd);
}

#[test]
fn a_snapshot_restores_only_over_its_own_image() {
    require_kvm();
    let img = image("snap.img", SECTOR0_MARK);
    let snap = temp("snap");
    let snap_dir = snap.to_str().unwrap();
    let out = run_blk(
        &["run"],
        &img,
        &[
            "--snapshot-on",
            "virtio-blk: capacity",
            "--snapshot-dir",
            snap_dir,
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(snap.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"disks\"") && manifest.contains("snap.img"),
        "{manifest}"
    );

    // Another image of the same size: refused before the guest runs.
    let other = image("snap-other.img", b"OTHERIMG");
    let restore = |disk: &Path| {
        run_ftvm(
            &[
                "run",
                "--restore",
                snap.to_str().unwrap(),
                "--disk",
                disk.to_str().unwrap(),
            ],
            b"",
        )
    };
    let bad = restore(&other);
    let err = stderr(&bad);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not the image the snapshot was taken with"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // A copy of the image: the guest goes on where it was and finishes its I/O there.
    let copy = temp("snap-copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let good = restore(&copy);
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    assert!(
        stdout(&good).contains("write and read back ok"),
        "{}",
        stdout(&good)
    );
    assert_eq!(sector(&copy, 1), GUEST_PATTERN.repeat(64));
    assert_eq!(sector(&img, 1), vec![0u8; 512], "the original is untouched");
    let _ = std::fs::remove_dir_all(snap);
    for f in [img, other, copy] {
        let _ = std::fs::remove_file(f);
    }
}
