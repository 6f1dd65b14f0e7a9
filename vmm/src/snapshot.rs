//! Snapshots of a paused VM in a directory:
//!
//! - `manifest.json`: format name and version, memory size, clock mode, and a CRC32 and
//!   length for each of the other files;
//! - `state.json`: the vCPU, device and clock state ([`VmState`]);
//! - `memory.bin`: guest RAM, range after range, written sparsely (zero pages are holes).
//!
//! A snapshot is written to `DIR.partial` and renamed into place, so a crash never leaves a
//! half-written snapshot under the final name. Loading checks the version, every length and
//! checksum, and then the state itself (devices validate theirs), before any of it reaches
//! KVM. A bad snapshot is an error naming the file and the problem, never a panic.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::clock::ClockMode;
use crate::memory;
use crate::state::VmState;

/// The format name every manifest carries.
pub const FORMAT: &str = "ftvm-snapshot";
/// The snapshot format version this ftvm writes and reads.
pub const VERSION: u32 = 1;
const CHUNK: usize = 1 << 20;

/// Why a snapshot could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file or directory operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// The operation, as a verb ("create", "write", ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest does not parse, is of another format, or describes a machine that
    /// cannot be built here.
    #[error("{path} is not an ftvm snapshot manifest: {reason}")]
    BadManifest {
        /// Path of the manifest.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The snapshot has a format version this ftvm does not read.
    #[error("snapshot {path} has format version {found}; this ftvm reads version {VERSION}")]
    Version {
        /// Path of the manifest.
        path: PathBuf,
        /// The version it gives.
        found: u32,
    },
    /// A file's length or CRC32 is not what the manifest says.
    #[error("{path} is corrupt: {what} (expected {expected:#x}, found {found:#x})")]
    Corrupt {
        /// Path of the file.
        path: PathBuf,
        /// Which check failed ("state length", "memory checksum", ...).
        what: &'static str,
        /// The value the manifest gives.
        expected: u64,
        /// The value the file has.
        found: u64,
    },
    /// The state file does not parse or holds a state that fails validation (or, saving,
    /// the state could not be serialised).
    #[error("{path} holds an invalid VM state: {reason}")]
    BadState {
        /// Path of the state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Guest memory could not be read to save it.
    #[error("cannot read guest memory for the snapshot")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// The snapshot directory to save to already exists.
    #[error("{path} already exists; choose a new snapshot directory")]
    Exists {
        /// The directory.
        path: PathBuf,
    },
}

/// Length and CRC32 of one of a snapshot's files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSum {
    /// Length of the file, in bytes.
    pub bytes: u64,
    /// CRC32 of its contents.
    pub crc32: u32,
}

/// A snapshot's `manifest.json`: what the snapshot holds and how to check its files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version it was written with.
    pub version: u32,
    /// Guest memory size, in MiB.
    pub mem_mib: u64,
    /// How guest time advanced in the saved VM.
    pub clock: ClockMode,
    /// Length and CRC32 of `state.json`.
    pub state: FileSum,
    /// Length and CRC32 of `memory.bin`.
    pub memory: FileSum,
    /// The disk images attached when the snapshot was taken (path, mode, size, CRC32):
    /// a restore refuses any other image.
    #[serde(default)]
    pub disks: Vec<crate::disk::DiskRecord>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Where a snapshot is written before it is renamed into place: `DIR.partial` beside
/// `DIR`, whatever DIR's name (`with_extension` would turn `snap.v2` into `snap.partial`,
/// an unrelated directory this function then deletes).
fn partial_path(dir: &Path) -> std::path::PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    dir.with_file_name(name)
}

/// Save a paused VM to `dir` (which must not exist yet).
pub fn save(
    dir: &Path,
    state: &VmState,
    mem: &GuestMemoryMmap,
    mem_mib: u64,
    clock: ClockMode,
    disks: Vec<crate::disk::DiskRecord>,
) -> Result<Manifest, SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::Exists {
            path: dir.to_owned(),
        });
    }
    let partial = partial_path(dir);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io("remove the stale", &partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io("create", &partial))?;

    let state_path = partial.join("state.json");
    let state_bytes = serde_json::to_vec_pretty(state).map_err(|e| SnapshotError::BadState {
        path: state_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&state_path, &state_bytes).map_err(io("write", &state_path))?;

    let mem_path = partial.join("memory.bin");
    let memory = write_memory(&mem_path, mem, mem_mib)?;

    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        mem_mib,
        clock,
        state: FileSum {
            bytes: state_bytes.len() as u64,
            crc32: crc32fast::hash(&state_bytes),
        },
        memory,
        disks,
    };
    let manifest_path = partial.join("manifest.json");
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::BadManifest {
        path: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&manifest_path, text).map_err(io("write", &manifest_path))?;
    std::fs::rename(&partial, dir).map_err(io("move the snapshot into place at", dir))?;
    Ok(manifest)
}

fn write_memory(
    path: &Path,
    mem: &GuestMemoryMmap,
    mem_mib: u64,
) -> Result<FileSum, SnapshotError> {
    let mut file = File::create(path).map_err(io("create", path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    for (start, len) in memory::ram_ranges(mem_mib) {
        let mut done = 0usize;
        while done < len {
            let n = CHUNK.min(len - done);
            mem.read_slice(&mut buf[..n], GuestAddress(start.0 + done as u64))?;
            hasher.update(&buf[..n]);
            for (i, page) in buf[..n].chunks(memory::PAGE_SIZE as usize).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = offset + done as u64 + i as u64 * memory::PAGE_SIZE;
                    file.seek(SeekFrom::Start(at)).map_err(io("write", path))?;
                    file.write_all(page).map_err(io("write", path))?;
                }
            }
            done += n;
        }
        offset += len as u64;
    }
    file.set_len(offset).map_err(io("write", path))?;
    file.sync_all().map_err(io("write", path))?;
    Ok(FileSum {
        bytes: offset,
        crc32: hasher.finalize(),
    })
}

/// A snapshot read back and checked, ready to be turned into a VM.
pub struct Loaded {
    /// The snapshot's manifest.
    pub manifest: Manifest,
    /// The vCPU, device and clock state, validated.
    pub state: VmState,
    /// Guest memory, filled from `memory.bin`.
    pub memory: GuestMemoryMmap,
}

fn check_sum(
    path: &Path,
    what: &'static str,
    want: &FileSum,
    bytes: u64,
    crc: u32,
) -> Result<(), SnapshotError> {
    if bytes != want.bytes {
        return Err(SnapshotError::Corrupt {
            path: path.to_owned(),
            what: if what == "state" {
                "state length"
            } else {
                "memory length"
            },
            expected: want.bytes,
            found: bytes,
        });
    }
    if crc != want.crc32 {
        return Err(SnapshotError::Corrupt {
            path: path.to_owned(),
            what: if what == "state" {
                "state checksum"
            } else {
                "memory checksum"
            },
            expected: u64::from(want.crc32),
            found: u64::from(crc),
        });
    }
    Ok(())
}

/// Read and verify the snapshot in `dir`.
pub fn load(dir: &Path) -> Result<Loaded, SnapshotError> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read(&manifest_path).map_err(io("read", &manifest_path))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| SnapshotError::BadManifest {
            path: manifest_path.clone(),
            reason: e.to_string(),
        })?;
    if manifest.format != FORMAT {
        return Err(SnapshotError::BadManifest {
            path: manifest_path,
            reason: format!("format is '{}'", manifest.format),
        });
    }
    if manifest.version != VERSION {
        return Err(SnapshotError::Version {
            path: manifest_path,
            found: manifest.version,
        });
    }
    memory::check_size(manifest.mem_mib).map_err(|e| SnapshotError::BadManifest {
        path: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    if manifest.memory.bytes != manifest.mem_mib << 20 {
        return Err(SnapshotError::BadManifest {
            path: manifest_path,
            reason: format!(
                "memory.bin of {} bytes for {} MiB of RAM",
                manifest.memory.bytes, manifest.mem_mib
            ),
        });
    }

    let state_path = dir.join("state.json");
    let state_bytes = std::fs::read(&state_path).map_err(io("read", &state_path))?;
    check_sum(
        &state_path,
        "state",
        &manifest.state,
        state_bytes.len() as u64,
        crc32fast::hash(&state_bytes),
    )?;
    let state: VmState =
        serde_json::from_slice(&state_bytes).map_err(|e| SnapshotError::BadState {
            path: state_path.clone(),
            reason: e.to_string(),
        })?;
    state.validate().map_err(|reason| SnapshotError::BadState {
        path: state_path,
        reason,
    })?;

    let mem_path = dir.join("memory.bin");
    let memory = memory::create(manifest.mem_mib).map_err(|e| SnapshotError::BadManifest {
        path: manifest_path,
        reason: e.to_string(),
    })?;
    let file = File::open(&mem_path).map_err(io("read", &mem_path))?;
    let len = file.metadata().map_err(io("read", &mem_path))?.len();
    let mut reader = BufReader::with_capacity(CHUNK, file);
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    if len == manifest.memory.bytes {
        for (start, size) in memory::ram_ranges(manifest.mem_mib) {
            let mut done = 0usize;
            while done < size {
                let n = CHUNK.min(size - done);
                reader
                    .read_exact(&mut buf[..n])
                    .map_err(io("read", &mem_path))?;
                hasher.update(&buf[..n]);
                memory.write_slice(&buf[..n], GuestAddress(start.0 + done as u64))?;
                done += n;
            }
        }
    }
    check_sum(
        &mem_path,
        "memory",
        &manifest.memory,
        len,
        hasher.finalize(),
    )?;
    Ok(Loaded {
        manifest,
        state,
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_directory_keeps_the_whole_name() {
        assert_eq!(
            partial_path(Path::new("/x/snap.v2")),
            Path::new("/x/snap.v2.partial")
        );
        assert_eq!(partial_path(Path::new("snap")), Path::new("snap.partial"));
    }
}
