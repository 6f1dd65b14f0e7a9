//! Disks under a primary and a backup (non-shared: each host has its own copy). The
//! `disk-writer` tiny guest writes record N to sector 8 + N every 4 ms, then reads all
//! 500 back and checks them. A backup joins with a copy that differs from the primary's
//! image, the state transfer brings it up to date, the primary is killed in the middle,
//! and the live backup's guest must find every record, whether written before the join
//! (transferred), between (replayed) or after the failover (its own).

mod common;
use common::pair::*;
use common::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

const RECORDS: u64 = 500;
const FIRST_SECTOR: u64 = 8;
const IMAGE: usize = 1 << 20;
/// A mark the primary's image holds far from the records, which only the transfer can
/// bring to the backup's copy.
const MARK_AT: usize = 900 * 1024;

fn image(dir: &Path, name: &str, fill: u8, mark: bool) -> PathBuf {
    let mut bytes = vec![fill; IMAGE];
    if mark {
        bytes[MARK_AT..MARK_AT + 9].copy_from_slice(b"ftvm-mark");
    }
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn disk_primary(dir: &Path, port: u16, img: &Path) -> Vmm {
    let extra = ["--disk", img.to_str().unwrap()];
    primary_of("disk", "disk-writer", dir, port, &pair_key(dir), &extra)
}

/// A backup given `disks` as its copies.
fn disk_backup(dir: &Path, port: u16, disks: &[&Path]) -> Vmm {
    let extra: Vec<&str> = disks
        .iter()
        .flat_map(|d| ["--disk", d.to_str().unwrap()])
        .collect();
    backup_of("disk", dir, port, None, &extra)
}

fn console(dir: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(dir.join("disk.console")).unwrap_or_default())
        .into_owned()
}

#[test]
fn a_backup_with_its_own_disk_copy_takes_over_the_writes() {
    require_kvm();
    let dir = shared_dir("disk-pair");
    let a = image(&dir, "a.img", 0, true);
    let b = image(&dir, "b.img", 0xee, false);
    let port = free_port();
    let mut primary = disk_primary(&dir, port, &a);
    primary.wait_for("waiting for a backup", Duration::from_secs(30));
    let mut backup = disk_backup(&dir, port, &[&b]);
    primary.wait_for("protected:", Duration::from_secs(60));
    // Some records replayed on the backup, then the primary's host loses power.
    let t = std::time::Instant::now();
    while !console(&dir).contains("disk 100\n") {
        assert!(t.elapsed() < Duration::from_secs(60), "{}", console(&dir));
        std::thread::sleep(Duration::from_millis(5));
    }
    primary.kill();
    let status = backup.wait(Duration::from_secs(120));
    let text = console(&dir);
    assert_eq!(status, 0, "backup:\n{}\nconsole:\n{text}", backup.stderr());
    assert!(
        backup.stderr().contains("live at exit"),
        "{}",
        backup.stderr()
    );
    assert!(
        text.contains("disk-writer: all records read back"),
        "the guest on the backup's copy:\n{text}"
    );
    // The copy itself: every record in place, and the primary's far mark transferred.
    let copy = std::fs::read(&b).unwrap();
    for n in 0..RECORDS {
        let at = ((FIRST_SECTOR + n) * 512) as usize;
        assert_eq!(&copy[at..at + 8], b"disk-rec", "record {n}");
        assert_eq!(copy[at + 8..at + 16], n.to_le_bytes(), "record {n}");
    }
    assert_eq!(&copy[MARK_AT..MARK_AT + 9], b"ftvm-mark");
    assert!(
        copy[IMAGE - 4096..].iter().all(|&x| x == 0),
        "the primary's zeros replace the copy's old bytes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_backup_without_matching_disks_is_refused() {
    require_kvm();
    let dir = shared_dir("disk-pair-bad");
    let a = image(&dir, "a.img", 0, true);
    let small = dir.join("small.img");
    std::fs::write(&small, vec![0u8; 64 * 1024]).unwrap();
    let port = free_port();
    let mut primary = disk_primary(&dir, port, &a);
    primary.wait_for("waiting for a backup", Duration::from_secs(30));
    for (disks, needle) in [
        (
            vec![],
            "the primary's guest has 1 disks, this backup was given 0",
        ),
        (
            vec![small.as_path()],
            "disk 0 is 1048576 bytes on the primary, 65536 here",
        ),
    ] {
        let mut backup = disk_backup(&dir, port, &disks);
        let status = backup.wait(Duration::from_secs(60));
        assert_ne!(status, 0, "{}", backup.stderr());
        assert!(backup.stderr().contains(needle), "{}", backup.stderr());
    }
    // The primary carried on alone and finishes its guest.
    assert_eq!(
        primary.wait(Duration::from_secs(60)),
        0,
        "{}",
        primary.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_backup_disk_that_cannot_be_opened_is_refused_before_connecting() {
    require_kvm();
    let dir = shared_dir("disk-pair-missing");
    let mut backup = disk_backup(&dir, free_port(), &[&dir.join("missing.img")]);
    assert_ne!(backup.wait(Duration::from_secs(10)), 0);
    let err = backup.stderr();
    assert!(
        err.contains("missing.img") && !err.contains("cannot reach"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
