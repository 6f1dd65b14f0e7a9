//! The disks' part of a state transfer (issue 11: disks are not shared; each host keeps
//! its own copy of every image). The primary announces its disks, sends every chunk of
//! every image while the guest runs, then the chunks the guest wrote meanwhile with each
//! memory round, and the last ones while the guest is paused (see [`crate::disk::CHUNK`]).
//! The backup writes them into its own copies, given with `--disk`, before it builds the
//! machine; from then on it performs the guest's writes itself, at the same exits.
//!
//! A read-only disk is never written by the guest: the backup's copy is compared instead
//! of written, and a copy that differs is refused.

use std::io::Write;

use ft_log::channel::ToBackup;

use super::link::send;
use super::transfer::TransferError;
use crate::disk::{FileBackend, CHUNK};

/// Stops tracking writes when the transfer ends, however it ends.
pub struct Tracking<'a>(&'a [FileBackend]);

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        for d in self.0 {
            d.dirty().stop();
        }
    }
}

/// Primary: announce the disks, start tracking their writes and send every chunk.
/// Returns the tracking guard and the bytes sent (zero chunks count as none).
pub fn send_all<'a>(
    out: &mut impl Write,
    disks: &'a [FileBackend],
) -> Result<(Tracking<'a>, u64), TransferError> {
    use ftvm_devices::virtio::BlockBackend;
    let tracking = Tracking(disks);
    if disks.is_empty() {
        return Ok((tracking, 0));
    }
    send(
        out,
        &ToBackup::Disks {
            bytes: disks.iter().map(|d| d.len()).collect(),
        },
    )?;
    let mut sent = 0;
    for (index, disk) in disks.iter().enumerate() {
        // Marks from here on: a chunk written after we read it comes again.
        disk.dirty().start(disk.len());
        for chunk in 0..disk.len().div_ceil(CHUNK) {
            sent += send_chunk(out, index, disk, chunk)?;
        }
    }
    Ok((tracking, sent))
}

/// Primary: send the chunks written since the last call (all chunks were sent once).
pub fn send_dirty(out: &mut impl Write, disks: &[FileBackend]) -> Result<u64, TransferError> {
    let mut sent = 0;
    for (index, disk) in disks.iter().enumerate() {
        for chunk in disk.dirty().take() {
            sent += send_chunk(out, index, disk, chunk)?;
        }
    }
    Ok(sent)
}

fn send_chunk(
    out: &mut impl Write,
    index: usize,
    disk: &FileBackend,
    chunk: u64,
) -> Result<u64, TransferError> {
    use ftvm_devices::virtio::BlockBackend;
    let offset = chunk * CHUNK;
    let len = CHUNK.min(disk.len().saturating_sub(offset));
    if len == 0 {
        return Ok(0);
    }
    let mut data = vec![0u8; len as usize];
    disk.read_raw(offset, &mut data)
        .map_err(|source| TransferError::DiskRead { index, source })?;
    if data.iter().all(|&b| b == 0) {
        data = Vec::new();
    }
    let bytes = data.len() as u64;
    send(
        out,
        &ToBackup::DiskChunk {
            disk: index as u32,
            offset,
            len: len as u32,
            data,
        },
    )?;
    Ok(bytes)
}

/// Backup: what arrives for the disks, checked and written into its own copies.
pub struct DiskReceiver<'a> {
    disks: &'a [(FileBackend, bool)],
    announced: bool,
    /// Bytes received that were not zeros.
    pub bytes: u64,
}

fn invalid(reason: String) -> TransferError {
    TransferError::Invalid {
        what: "disk transfer",
        reason,
    }
}

impl<'a> DiskReceiver<'a> {
    /// Over the backup's copies, in device order, each with whether it is read-only.
    pub fn new(disks: &'a [(FileBackend, bool)]) -> Self {
        Self {
            disks,
            announced: false,
            bytes: 0,
        }
    }

    /// The primary's disk sizes: as many disks as ours, each of our copy's size.
    pub fn announce(&mut self, bytes: &[u64]) -> Result<(), TransferError> {
        use ftvm_devices::virtio::BlockBackend;
        if self.announced {
            return Err(invalid("disks announced twice".into()));
        }
        if bytes.len() != self.disks.len() {
            return Err(invalid(format!(
                "the primary's guest has {} disks, this backup was given {} (--disk)",
                bytes.len(),
                self.disks.len()
            )));
        }
        for (index, ((ours, _), theirs)) in self.disks.iter().zip(bytes).enumerate() {
            if ours.len() != *theirs {
                return Err(invalid(format!(
                    "disk {index} is {theirs} bytes on the primary, {} here",
                    ours.len()
                )));
            }
        }
        self.announced = true;
        Ok(())
    }

    /// One chunk: announced disk, aligned, inside the image, `data` of `len` bytes or
    /// empty (zeros).
    pub fn chunk(
        &mut self,
        disk: u32,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> Result<(), TransferError> {
        use ftvm_devices::virtio::BlockBackend;
        if !self.announced {
            return Err(invalid(
                "a disk chunk before the disks were announced".into(),
            ));
        }
        let index = disk as usize;
        let Some((copy, read_only)) = self.disks.get(index) else {
            return Err(invalid(format!(
                "chunk for disk {disk}, which does not exist"
            )));
        };
        let len64 = u64::from(len);
        let fits = offset
            .checked_add(len64)
            .is_some_and(|end| end <= copy.len());
        if len == 0 || len64 > CHUNK || !offset.is_multiple_of(CHUNK) || !fits {
            return Err(invalid(format!(
                "disk {disk}: chunk of {len} bytes at {offset} (disk of {} bytes)",
                copy.len()
            )));
        }
        if !data.is_empty() && data.len() != len as usize {
            return Err(invalid(format!(
                "disk {disk}: chunk at {offset} says {len} bytes and carries {}",
                data.len()
            )));
        }
        let zeros;
        let data = if data.is_empty() {
            zeros = vec![0u8; len as usize];
            &zeros[..]
        } else {
            data
        };
        if *read_only {
            let mut here = vec![0u8; data.len()];
            copy.read_raw(offset, &mut here)
                .map_err(|source| TransferError::DiskWrite { index, source })?;
            if here != data {
                return Err(invalid(format!(
                    "read-only disk {disk} differs from the primary's at bytes {offset}..{}",
                    offset + len64
                )));
            }
        } else {
            copy.write_raw(offset, data)
                .map_err(|source| TransferError::DiskWrite { index, source })?;
        }
        if !data.iter().all(|&b| b == 0) {
            self.bytes += len64;
        }
        Ok(())
    }

    /// At the machine state: every disk announced (if there are any) and made durable.
    pub fn finish(&self) -> Result<(), TransferError> {
        if !self.disks.is_empty() && !self.announced {
            return Err(invalid(format!(
                "this backup was given {} disks (--disk), the primary's guest has none",
                self.disks.len()
            )));
        }
        for (index, (copy, _)) in self.disks.iter().enumerate() {
            copy.sync()
                .map_err(|source| TransferError::DiskWrite { index, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::DiskSpec;
    use ft_log::channel::MessageDecoder;
    use std::path::PathBuf;

    fn image(tag: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ftvm-diskcopy-{}-{tag}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn open(p: &std::path::Path, read_only: bool) -> FileBackend {
        FileBackend::open(&DiskSpec {
            path: p.to_owned(),
            read_only,
        })
        .unwrap()
    }

    fn messages(bytes: &[u8]) -> Vec<ToBackup> {
        let mut dec = MessageDecoder::<ToBackup>::new();
        dec.push(&ft_log::channel::encode_channel_header());
        dec.push(bytes);
        let mut out = Vec::new();
        while let Some(m) = dec.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    fn apply(rx: &mut DiskReceiver<'_>, ms: Vec<ToBackup>) -> Result<(), TransferError> {
        for m in ms {
            match m {
                ToBackup::Disks { bytes } => rx.announce(&bytes)?,
                ToBackup::DiskChunk {
                    disk,
                    offset,
                    len,
                    data,
                } => rx.chunk(disk, offset, len, &data)?,
                other => panic!("unexpected {other:?}"),
            }
        }
        rx.finish()
    }

    #[test]
    fn a_copy_ends_equal_including_writes_during_the_transfer() {
        use ftvm_devices::virtio::BlockBackend;
        let mut src = vec![0u8; 3 * CHUNK as usize + 4096];
        src[10] = 1;
        src[2 * CHUNK as usize + 7] = 2;
        let a = image("src", &src);
        let b = image("dst", &vec![0xeeu8; src.len()]);
        let mut primary = open(&a, false);
        let disks = [primary.clone()];
        let mut wire = Vec::new();
        let (tracking, sent) = send_all(&mut wire, &disks).unwrap();
        assert_eq!(sent, 2 * CHUNK, "zero chunks travel without data");
        // The guest writes while the transfer runs: only that chunk comes again.
        primary.write_at(3 * CHUNK, &[9u8; 512]).unwrap();
        assert_eq!(send_dirty(&mut wire, &disks).unwrap(), 4096);
        drop(tracking);
        let backup = [(open(&b, false), false)];
        let mut rx = DiskReceiver::new(&backup);
        apply(&mut rx, messages(&wire)).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        for p in [a, b] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn lies_about_disks_are_refused() {
        let a = image("lies", &vec![0u8; 2 * CHUNK as usize]);
        let backup = [(open(&a, false), false)];
        let mut rx = DiskReceiver::new(&backup);
        assert!(rx.chunk(0, 0, 512, &[]).is_err(), "before the announcement");
        assert!(rx.announce(&[CHUNK]).is_err(), "wrong size");
        assert!(rx.announce(&[1, 2]).is_err(), "wrong count");
        rx.announce(&[2 * CHUNK]).unwrap();
        assert!(rx.announce(&[2 * CHUNK]).is_err(), "twice");
        for (disk, offset, len, data) in [
            (1, 0, 512, vec![]),
            (0, 512, 512, vec![]),
            (0, CHUNK, CHUNK as u32 + 1, vec![]),
            (0, 2 * CHUNK, 512, vec![]),
            (0, u64::MAX - CHUNK + 1, 512, vec![]),
            (0, 0, 0, vec![]),
            (0, 0, 512, vec![1u8; 100]),
        ] {
            assert!(
                rx.chunk(disk, offset, len, &data).is_err(),
                "{disk} {offset} {len} {}",
                data.len()
            );
        }
        rx.chunk(0, CHUNK, 512, &[3u8; 512]).unwrap();
        let none: [(FileBackend, bool); 0] = [];
        assert!(
            DiskReceiver::new(&backup).finish().is_err(),
            "never announced"
        );
        DiskReceiver::new(&none).finish().unwrap();
        let _ = std::fs::remove_file(a);
    }

    #[test]
    fn a_read_only_copy_is_compared_not_written() {
        let a = image("ro-a", &vec![5u8; CHUNK as usize]);
        let backup = [(open(&a, true), true)];
        let mut rx = DiskReceiver::new(&backup);
        rx.announce(&[CHUNK]).unwrap();
        rx.chunk(0, 0, CHUNK as u32, &vec![5u8; CHUNK as usize])
            .unwrap();
        let e = rx.chunk(0, 0, CHUNK as u32, &[]).unwrap_err().to_string();
        assert!(e.contains("differs"), "{e}");
        let _ = std::fs::remove_file(a);
    }
}
