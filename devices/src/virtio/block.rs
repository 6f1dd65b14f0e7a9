//! virtio-blk (virtio 1.2, 5.2) over a [`BlockBackend`].
//!
//! Requests are handled synchronously inside [`super::VirtioPci::process`], at the exit
//! of the driver's notify write: the guest sees the completion interrupt at a point the
//! log names, and a replayer doing the same reads and writes on its copy of the image at
//! the same exits reproduces it. Data moves through one bounded scratch buffer, however
//! long the guest's buffers are.

use std::io;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::chain::{for_each_chain, for_each_piece, Buffer, Chain};
pub use super::disk::{BlockBackend, MemBackend};
use super::{read_window, VirtioDevice, VirtioError};
use crate::StateError;

pub const SECTOR_SIZE: u64 = 512;
/// Descriptors per request the driver may use (`seg_max`): the queue minus header and
/// status descriptors.
pub const QUEUE_SIZE: u16 = 128;
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// `struct virtio_blk_outhdr`: type (le32), ioprio (le32), sector (le64).
const HEADER_LEN: u64 = 16;
const SCRATCH_LEN: usize = 64 * 1024;
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Why a well-formed request failed; the driver gets IOERR or UNSUPP in its status byte.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request reaches past the end of the disk.
    #[error("{len} bytes at sector {sector} go past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        /// First sector of the request.
        sector: u64,
        /// Length of the request's data, in bytes.
        len: u64,
        /// Size of the disk, in sectors.
        capacity: u64,
    },
    /// The data length is not a multiple of the sector size (the length, in bytes).
    #[error("data length {0} is not a multiple of 512 bytes")]
    Unaligned(u64),
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A request type this device does not implement (the type).
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// The backend failed.
    #[error("disk I/O at byte {offset}: {source}")]
    Io {
        /// Byte offset on the disk of the failed access (0 for a flush).
        offset: u64,
        /// The backend's error.
        source: io::Error,
    },
    /// A guest buffer could not be read or written.
    #[error("guest memory at {addr:#x}: {source}")]
    Memory {
        /// Guest-physical address of the access.
        addr: u64,
        /// vm-memory's error.
        source: GuestMemoryError,
    },
}

/// Request counters of a [`Block`] device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockStats {
    /// Read (IN) requests completed.
    pub reads: u64,
    /// Write (OUT) requests completed.
    pub writes: u64,
    /// Flush requests received, whether or not the flush succeeded.
    pub flushes: u64,
    /// Bytes read from the disk into guest memory.
    pub bytes_read: u64,
    /// Bytes written from guest memory to the disk.
    pub bytes_written: u64,
    /// Requests answered with IOERR or UNSUPP.
    pub failed: u64,
}

/// Saved state of a [`Block`] device (the disk's contents are not part of it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockState {
    /// Disk size in 512-byte sectors, checked against the disk on restore.
    pub capacity_sectors: u64,
    /// Whether the disk is read-only, checked against the device on restore.
    pub read_only: bool,
    /// Request counters.
    pub stats: BlockStats,
}

/// A virtio-blk device on disk backend `B`.
pub struct Block<B> {
    backend: B,
    read_only: bool,
    id: [u8; ID_LEN],
    capacity: u64,
    stats: BlockStats,
    last_error: Option<BlockError>,
    scratch: Vec<u8>,
}

impl<B: BlockBackend> Block<B> {
    /// A disk on `backend`; `id` (at most 20 bytes are used) answers GET_ID, which is the
    /// serial number the guest shows in /sys/block/vdX/serial.
    pub fn new(backend: B, read_only: bool, id: &str) -> Self {
        let mut serial = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            capacity: backend.len() / SECTOR_SIZE,
            backend,
            read_only,
            id: serial,
            stats: BlockStats::default(),
            last_error: None,
            scratch: vec![0; SCRATCH_LEN],
        }
    }

    /// The disk backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Request counters so far.
    pub fn stats(&self) -> &BlockStats {
        &self.stats
    }

    /// The last request failure since the previous call, for the VMM to report.
    pub fn take_last_error(&mut self) -> Option<BlockError> {
        self.last_error.take()
    }

    /// Byte offset of `len` bytes at `sector`, if inside the disk.
    fn disk_offset(&self, sector: u64, len: u64) -> Result<u64, BlockError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Unaligned(len));
        }
        let offset = sector.checked_mul(SECTOR_SIZE);
        let end = offset.and_then(|o| o.checked_add(len));
        match (offset, end) {
            (Some(offset), Some(end)) if end <= self.capacity * SECTOR_SIZE => Ok(offset),
            _ => Err(BlockError::OutOfRange {
                sector,
                len,
                capacity: self.capacity,
            }),
        }
    }

    /// Moves `len` bytes between the disk at `sector` and the byte range `skip..` of the
    /// chain's `buffers`, in scratch-sized chunks.
    fn transfer<M: GuestMemory>(
        &mut self,
        mem: &M,
        buffers: &[Buffer],
        skip: u64,
        sector: u64,
        len: u64,
        to_guest: bool,
    ) -> Result<(), BlockError> {
        let mut offset = self.disk_offset(sector, len)?;
        let (backend, scratch) = (&mut self.backend, &mut self.scratch);
        for_each_piece(buffers, skip, len, |addr, n| {
            for done in (0..n).step_by(SCRATCH_LEN) {
                let chunk = &mut scratch[..(n - done).min(SCRATCH_LEN)];
                let at = GuestAddress(addr.0 + done as u64);
                let io_err = |source| BlockError::Io { offset, source };
                let mem_err = |source| BlockError::Memory { addr: at.0, source };
                if to_guest {
                    backend.read_at(offset, chunk).map_err(io_err)?;
                    mem.write_slice(chunk, at).map_err(mem_err)?;
                } else {
                    mem.read_slice(chunk, at).map_err(mem_err)?;
                    backend.write_at(offset, chunk).map_err(io_err)?;
                }
                offset += chunk.len() as u64;
            }
            Ok(())
        })
    }

    /// IN: disk → the writable buffers before the status byte.
    fn read<M: GuestMemory>(
        &mut self,
        mem: &M,
        c: &Chain,
        sector: u64,
        len: u64,
    ) -> Result<(), BlockError> {
        self.transfer(mem, &c.writable, 0, sector, len, true)?;
        self.stats.reads += 1;
        self.stats.bytes_read += len;
        Ok(())
    }

    /// OUT: the readable buffers after the header → disk.
    fn write<M: GuestMemory>(
        &mut self,
        mem: &M,
        c: &Chain,
        sector: u64,
        len: u64,
    ) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.transfer(mem, &c.readable, HEADER_LEN, sector, len, false)?;
        self.stats.writes += 1;
        self.stats.bytes_written += len;
        Ok(())
    }

    fn get_id<M: GuestMemory>(&mut self, mem: &M, c: &Chain, room: u64) -> Result<u64, BlockError> {
        let len = room.min(ID_LEN as u64);
        let mut copied = 0;
        for_each_piece(&c.writable, 0, len, |addr, n| {
            let bytes = &self.id[copied..copied + n];
            copied += n;
            mem.write_slice(bytes, addr)
                .map_err(|source| BlockError::Memory {
                    addr: addr.0,
                    source,
                })
        })?;
        Ok(len)
    }

    /// Handles one request; returns the bytes written into the chain (used length).
    fn handle<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: usize,
        c: &Chain,
    ) -> Result<u32, VirtioError> {
        let short = |what| VirtioError::ChainTooShort {
            queue,
            head: c.head,
            what,
        };
        let (readable, writable) = (c.readable_len(), c.writable_len());
        if readable < HEADER_LEN {
            return Err(short("request header"));
        }
        if writable < 1 {
            return Err(short("status byte"));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        let mut filled = 0;
        let mut status_addr = GuestAddress(0);
        let outside = |addr: GuestAddress, len: usize| VirtioError::BufferOutsideMemory {
            queue,
            head: c.head,
            addr: addr.0,
            len: len as u32,
        };
        for_each_piece(&c.readable, 0, HEADER_LEN, |addr, n| {
            mem.read_slice(&mut header[filled..filled + n], addr)
                .map_err(|_| outside(addr, n))?;
            filled += n;
            Ok::<_, VirtioError>(())
        })?;
        for_each_piece(&c.writable, writable - 1, 1, |addr, _| {
            status_addr = addr;
            Ok::<_, VirtioError>(())
        })?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..]);
        let sector = u64::from_le_bytes(sector);
        let data_in = writable - 1;
        let result = match kind {
            VIRTIO_BLK_T_IN => self.read(mem, c, sector, data_in).map(|()| data_in),
            VIRTIO_BLK_T_OUT => self
                .write(mem, c, sector, readable - HEADER_LEN)
                .map(|()| 0),
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flushes += 1;
                self.backend
                    .flush()
                    .map(|()| 0)
                    .map_err(|source| BlockError::Io { offset: 0, source })
            }
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, c, data_in),
            other => Err(BlockError::Unsupported(other)),
        };
        let (status, written) = match result {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(e) => {
                self.stats.failed += 1;
                let status = match e {
                    BlockError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
                    _ => VIRTIO_BLK_S_IOERR,
                };
                self.last_error = Some(e);
                (status, 0)
            }
        };
        mem.write_obj(status as u8, status_addr)
            .map_err(|_| outside(status_addr, 1))?;
        // written + 1 <= the chain's total length, which virtio-queue keeps below 4 GiB.
        Ok((written + 1) as u32)
    }
}

impl<B: BlockBackend> VirtioDevice for Block<B> {
    type State = BlockState;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> u32 {
        0x01_80_00 // mass storage, other
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX | ro
    }

    /// `struct virtio_blk_config`: capacity (le64 at 0), size_max (le32 at 8, not
    /// offered), seg_max (le32 at 12); the rest is not offered and reads zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.capacity.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_window(&config, offset, data);
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<usize, VirtioError> {
        for_each_chain(queue, index, mem, |chain| self.handle(mem, index, chain))
    }

    fn state(&self) -> BlockState {
        BlockState {
            capacity_sectors: self.capacity,
            read_only: self.read_only,
            stats: self.stats.clone(),
        }
    }

    fn restore(&mut self, state: &BlockState) -> Result<(), StateError> {
        let err = |reason: String| Err(StateError::new("virtio-blk", reason));
        if state.capacity_sectors != self.capacity {
            return err(format!(
                "saved with a disk of {} sectors, this one has {}",
                state.capacity_sectors, self.capacity
            ));
        }
        if state.read_only != self.read_only {
            return err(format!(
                "saved read_only={}, opened otherwise",
                state.read_only
            ));
        }
        self.stats = state.stats.clone();
        Ok(())
    }
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "block_malformed_tests.rs"]
mod malformed_tests;
