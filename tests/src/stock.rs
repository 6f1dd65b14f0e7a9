//! The stock Debian kernel's image (`guest-images/stock/build.sh`, which `scripts/test.sh`
//! runs first) and the disks the tests give it: an ext4 data disk and a read-only one,
//! both made by `mkfs.ext4`, copied for each VM that restores a snapshot taken with them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's address on the simulated LAN (`scripts/hosts.sh`).
pub const GUEST_ADDR: &str = "10.77.0.100";

/// A file of the stock image in `build/stock`; panics naming the build script if missing.
pub fn image(name: &str) -> PathBuf {
    let p = crate::top().join("build/stock").join(name);
    assert!(
        p.exists(),
        "{} is missing: run guest-images/stock/build.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// What the read-only disk holds in `/seed.txt`.
pub const SEED_TEXT: &str = "seeded-by-mkfs";

/// The two disks of a stock VM: `/dev/vda` (ext4, writable, mounted by init at /mnt) and
/// `/dev/vdb` (ext4 holding `seed.txt`, attached read-only).
#[derive(Clone, Debug)]
pub struct StockDisks {
    /// The writable ext4 data disk, `/dev/vda` in the guest.
    pub data: PathBuf,
    /// The disk holding `seed.txt`, attached read-only as `/dev/vdb`.
    pub read_only: PathBuf,
}

fn mkfs(image: &Path, mib: u64, content: Option<&Path>) {
    let _ = std::fs::remove_file(image);
    let file = std::fs::File::create(image).expect("create a disk image");
    file.set_len(mib << 20).expect("size the disk image");
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F"]);
    if let Some(dir) = content {
        cmd.arg("-d").arg(dir);
    }
    let out = cmd.arg(image).output().expect("run mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4 {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl StockDisks {
    /// Make both disks in `dir`: a 64 MiB empty data disk, a 16 MiB read-only one.
    pub fn make(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("disk directory");
        let seed = dir.join("seed");
        std::fs::create_dir_all(&seed).expect("seed directory");
        std::fs::write(seed.join("seed.txt"), format!("{SEED_TEXT}\n")).expect("seed file");
        let disks = Self {
            data: dir.join("data.img"),
            read_only: dir.join("ro.img"),
        };
        mkfs(&disks.data, 64, None);
        mkfs(&disks.read_only, 16, Some(&seed));
        let _ = std::fs::remove_dir_all(&seed);
        disks
    }

    /// Copies of both in `dir` (which is made), for one more VM.
    pub fn copy_to(&self, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("disk directory");
        let copy = Self {
            data: dir.join("data.img"),
            read_only: dir.join("ro.img"),
        };
        std::fs::copy(&self.data, &copy.data).expect("copy the data disk");
        std::fs::copy(&self.read_only, &copy.read_only).expect("copy the read-only disk");
        copy
    }

    /// `--disk` arguments attaching both, in order.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--disk".into(),
            self.data.display().to_string(),
            "--disk".into(),
            format!("{},readonly", self.read_only.display()),
        ]
    }

    /// A file of the data disk's ext4 file system, read on the host with debugfs.
    pub fn read_data_file(&self, name: &str) -> Vec<u8> {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat /{name}"))
            .arg(&self.data)
            .output()
            .expect("run debugfs (e2fsprogs)");
        assert!(out.status.success(), "debugfs cat /{name}");
        out.stdout
    }
}

/// SHA-256 of `bytes` as lowercase hex (what busybox's sha256sum prints), by the host's
/// sha256sum.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
