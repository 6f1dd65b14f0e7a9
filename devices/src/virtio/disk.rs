//! The disk behind a virtio-blk device: the VMM's file, or memory in tests.

use std::io;

/// The disk image as the device sees it. The VMM implements it on a file.
pub trait BlockBackend: Send {
    /// Size in bytes; the device shows `len / 512` sectors.
    fn len(&self) -> u64;

    /// Whether the disk has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes the writes so far durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A disk in a vector, for tests and for throw-away disks.
#[derive(Debug, Clone, Default)]
pub struct MemBackend {
    /// The disk's bytes.
    pub data: Vec<u8>,
    /// Flushes requested so far.
    pub flushes: u64,
}

impl MemBackend {
    /// A zero-filled disk of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self {
            data: vec![0; len],
            flushes: 0,
        }
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).filter(|&e| e <= self.data.len());
        end.map(|end| start..end)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }
}

impl BlockBackend for MemBackend {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}
