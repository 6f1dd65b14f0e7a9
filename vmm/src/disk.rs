//! Disk images for virtio-blk: `--disk PATH[,readonly]`, the raw image file behind a
//! [`BlockBackend`], and what a snapshot records to recognise its disk again.
//!
//! The backend keeps a running CRC32 of every block it reads or writes (kind, offset and
//! data), part of the device state: the run's final digest covers what the disk did, so a
//! replay over another image (or one that skipped writes) ends with a different digest.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use ftvm_devices::virtio::BlockBackend;

use crate::platform::DiskBackend;
use serde::{Deserialize, Serialize};

mod dirty;
pub use dirty::{DirtyChunks, CHUNK};

const SECTOR: u64 = 512;

/// Why a disk could not be parsed, opened or matched to a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A `--disk` argument has an empty path or an unknown or repeated option.
    #[error("bad --disk '{spec}': {reason} (expected PATH or PATH,readonly)")]
    BadSpec {
        /// The argument as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The image could not be examined or opened.
    #[error("disk image {path}: {source}")]
    Open {
        /// Path of the image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The path names a directory, device or other non-regular file.
    #[error("disk image {path} is not a regular file")]
    NotAFile {
        /// Path of the image.
        path: PathBuf,
    },
    /// The image's size is not a whole number of 512-byte sectors.
    #[error("disk image {path} is {len} bytes, not a multiple of 512")]
    Unaligned {
        /// Path of the image.
        path: PathBuf,
        /// Size of the image, in bytes.
        len: u64,
    },
    /// A writable disk was asked for but the image cannot be opened for writing.
    #[error("disk image {path} is read-only; add ',readonly' to attach it read-only")]
    ReadOnlyFile {
        /// Path of the image.
        path: PathBuf,
    },
    /// A disk given to restore a snapshot differs in size or CRC32 from the one it recorded.
    #[error("disk {path} is not the image the snapshot was taken with ({what})")]
    Mismatch {
        /// Path of the given image.
        path: PathBuf,
        /// How it differs (size or CRC32, given and recorded).
        what: String,
    },
    /// The number of disks given to restore a snapshot is not the number it recorded.
    #[error("the snapshot was taken with {recorded} disks but --disk names {given}")]
    Count {
        /// Disks the snapshot recorded.
        recorded: usize,
        /// Disks given with `--disk`.
        given: usize,
    },
    /// Reading the whole image to compute its size and CRC32 failed.
    #[error("cannot read disk image {path} to check it: {source}")]
    Digest {
        /// Path of the image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One `--disk` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Path of the raw image file.
    pub path: PathBuf,
    /// Attach the disk read-only (`,readonly` or `,ro`).
    pub read_only: bool,
}

impl FromStr for DiskSpec {
    type Err = DiskError;
    fn from_str(spec: &str) -> Result<Self, DiskError> {
        let bad = |reason| DiskError::BadSpec {
            spec: spec.to_owned(),
            reason,
        };
        let mut parts = spec.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(bad("the path is empty"));
        }
        let mut read_only = false;
        for option in parts {
            match option {
                "readonly" | "ro" if !read_only => read_only = true,
                "readonly" | "ro" => return Err(bad("readonly is given twice")),
                _ => return Err(bad("unknown option after the path")),
            }
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// A raw image file, shared by the device and the VMM (a rebuilt device reuses it).
#[derive(Debug, Clone)]
pub struct FileBackend {
    file: Arc<File>,
    len: u64,
    /// Running CRC32 of the blocks moved so far.
    io_crc: Arc<AtomicU32>,
    /// Chunks written since a state transfer began sending the image.
    dirty: Arc<DirtyChunks>,
    /// A replayer's comparisons of its running CRC with the recorder's at checkpoints.
    checks: Arc<CrcChecks>,
}

/// How often a replaying disk was found in step with the recording one (equal running
/// CRCs of all I/O at a checkpoint) and how often not.
#[derive(Debug, Default)]
pub struct CrcChecks {
    /// Checkpoints at which the two running CRCs were equal.
    pub matched: AtomicU64,
    /// Checkpoints at which they differed.
    pub differed: AtomicU64,
}

impl FileBackend {
    /// Open the image of `spec`: a regular file, a multiple of 512 bytes, writable unless
    /// read-only was asked.
    pub fn open(spec: &DiskSpec) -> Result<Self, DiskError> {
        let path = &spec.path;
        let open = |source| DiskError::Open {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open)?;
        if !meta.is_file() {
            return Err(DiskError::NotAFile { path: path.clone() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!spec.read_only)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                    if !spec.read_only =>
                {
                    DiskError::ReadOnlyFile { path: path.clone() }
                }
                _ => open(source),
            })?;
        let len = file.metadata().map_err(open)?.len();
        if len % SECTOR != 0 {
            return Err(DiskError::Unaligned {
                path: path.clone(),
                len,
            });
        }
        Ok(Self {
            file: Arc::new(file),
            len,
            io_crc: Arc::new(AtomicU32::new(0)),
            dirty: Arc::default(),
            checks: Arc::default(),
        })
    }

    /// Compare this disk's running CRC with the recorder's at a checkpoint; counted.
    pub fn check_against(&self, recorded: u32) -> bool {
        let same = self.io_crc() == recorded;
        let counter = if same {
            &self.checks.matched
        } else {
            &self.checks.differed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        same
    }

    /// (matched, differed) comparisons so far.
    pub fn crc_checks(&self) -> (u64, u64) {
        (
            self.checks.matched.load(Ordering::Relaxed),
            self.checks.differed.load(Ordering::Relaxed),
        )
    }

    /// Where the device's writes are marked during a state transfer.
    pub fn dirty(&self) -> &DirtyChunks {
        &self.dirty
    }

    /// Read image bytes for a state transfer (not the guest's I/O: not in the CRC).
    pub fn read_raw(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    /// Write image bytes a state transfer brought (not the guest's I/O: not in the CRC).
    pub fn write_raw(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.write_all_at(buf, offset)
    }

    /// Make the image's contents durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The running CRC32 of the guest's reads and writes so far.
    pub fn io_crc(&self) -> u32 {
        self.io_crc.load(Ordering::SeqCst)
    }

    /// Set the running CRC32 (restoring device state).
    pub fn set_io_crc(&self, crc: u32) {
        self.io_crc.store(crc, Ordering::SeqCst);
    }

    fn account(&self, kind: u8, offset: u64, data: &[u8]) {
        let mut h = crc32fast::Hasher::new_with_initial(self.io_crc());
        h.update(&[kind]);
        h.update(&offset.to_le_bytes());
        h.update(data);
        self.set_io_crc(h.finalize());
    }

    fn check(&self, offset: u64, len: usize) -> std::io::Result<()> {
        let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
        match end {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "access past the end of the image",
            )),
        }
    }
}

impl BlockBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)?;
        self.account(b'r', offset, buf);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.write_all_at(buf, offset)?;
        self.dirty.mark(offset, buf.len() as u64);
        self.account(b'w', offset, buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// What a snapshot records of a disk, to refuse restoring over another image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskRecord {
    /// Path of the image when the snapshot was taken.
    pub path: PathBuf,
    /// Whether it was attached read-only.
    pub read_only: bool,
    /// Size of the image, in bytes.
    pub bytes: u64,
    /// CRC32 of the whole image.
    pub crc32: u32,
}

impl DiskRecord {
    /// Size and CRC32 of the image at `spec` now.
    pub fn of(spec: &DiskSpec) -> Result<Self, DiskError> {
        let (bytes, crc32) = image_sum(&spec.path)?;
        Ok(Self {
            path: spec.path.clone(),
            read_only: spec.read_only,
            bytes,
            crc32,
        })
    }

    /// The spec to attach the recorded image again.
    pub fn spec(&self) -> DiskSpec {
        DiskSpec {
            path: self.path.clone(),
            read_only: self.read_only,
        }
    }
}

/// Open every disk image (each checked: a regular file of whole sectors, writable unless
/// read-only was asked).
pub fn open_disks(specs: &[DiskSpec]) -> Result<Vec<DiskBackend>, DiskError> {
    specs
        .iter()
        .map(|spec| {
            Ok(DiskBackend {
                backend: FileBackend::open(spec)?,
                read_only: spec.read_only,
            })
        })
        .collect()
}

/// The disks to restore a snapshot with: those it recorded, or the `given` copies, which
/// must match the recorded images in number, size and CRC32.
pub fn snapshot_disks(
    recorded: &[DiskRecord],
    given: &[DiskSpec],
) -> Result<Vec<DiskSpec>, DiskError> {
    if given.is_empty() {
        return Ok(recorded.iter().map(DiskRecord::spec).collect());
    }
    if given.len() != recorded.len() {
        return Err(DiskError::Count {
            recorded: recorded.len(),
            given: given.len(),
        });
    }
    for (spec, rec) in given.iter().zip(recorded) {
        let (bytes, crc32) = image_sum(&spec.path)?;
        let what = if bytes != rec.bytes {
            format!("{bytes} bytes, the snapshot's had {}", rec.bytes)
        } else if crc32 != rec.crc32 {
            format!("CRC32 {crc32:#010x}, the snapshot's {:#010x}", rec.crc32)
        } else {
            continue;
        };
        return Err(DiskError::Mismatch {
            path: spec.path.clone(),
            what,
        });
    }
    Ok(given.to_vec())
}

/// Length and CRC32 of a whole image file.
pub fn image_sum(path: &Path) -> Result<(u64, u32), DiskError> {
    let err = |source| DiskError::Digest {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, h.finalize()))
}

#[cfg(test)]
mod tests;
