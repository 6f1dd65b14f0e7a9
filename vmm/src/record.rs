//! The recording side: writes log entries, takes checkpoint deltas, computes digests.

use std::io::Write;
use std::sync::Arc;

use ft_log::pages::{Listing, PageEncoder, PageEncoding, StateCodec, StateEncoding};
use ft_log::{Delta, Digest, Entry, LogStats};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::memory::PAGE_SIZE;
use crate::platform::Platform;
use crate::state::{wire, VcpuState};

/// Why the recorder could not write the log or take a checkpoint delta.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Writing or flushing the log stream failed.
    #[error("cannot write the log")]
    Write(#[source] std::io::Error),
    /// KVM could not report the pages dirtied in a memory slot.
    #[error("cannot read the dirty page log of memory slot {slot}")]
    DirtyLog {
        /// The memory slot (the index of its guest memory region).
        slot: u32,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A page of guest memory could not be read for a delta.
    #[error("cannot read guest memory for a delta")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The vCPU's state could not be read for a delta.
    #[error("cannot save the vCPU for a delta")]
    Vcpu(#[from] crate::vcpu::VcpuError),
    /// The vCPU or device state could not be serialised.
    #[error(transparent)]
    Encode(#[from] crate::state::wire::WireError),
    /// The page codec could not encode the delta's pages.
    #[error("cannot encode the delta's pages")]
    Pages(#[from] crate::pagesets::PageSetError),
}

/// Writes a log of the guest's non-determinism, with checkpoint deltas, to a byte stream.
pub struct Recorder {
    out: Box<dyn Write + Send>,
    vm: Arc<VmFd>,
    /// Pages go as differences from what the replayer has (see `ft_log::pages`).
    pages: PageEncoder,
    /// With the page codec, delta states go as differences from the previous delta's.
    vcpu_state: StateCodec,
    device_state: StateCodec,
    /// Entries and bytes written so far, by kind.
    pub stats: LogStats,
    /// Shared with a primary's controller (status).
    counters: Option<Arc<crate::counters::LiveCounters>>,
}

impl Recorder {
    /// Start a log on `out` (writes the stream header); `pages` encodes delta pages for a
    /// replayer that starts from the memory the encoder was made from.
    pub fn new(
        mut out: Box<dyn Write + Send>,
        vm: Arc<VmFd>,
        pages: PageEncoder,
    ) -> Result<Self, RecordError> {
        let header = ft_log::encode_header();
        out.write_all(&header).map_err(RecordError::Write)?;
        let stats = LogStats {
            bytes: header.len() as u64,
            ..Default::default()
        };
        crate::pagecheck::start(true);
        Ok(Self {
            out,
            vm,
            pages,
            vcpu_state: StateCodec::default(),
            device_state: StateCodec::default(),
            stats,
            counters: None,
        })
    }

    /// Count deltas where a controller can see them.
    pub fn with_counters(mut self, counters: Arc<crate::counters::LiveCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Write one entry to the log and count it.
    pub fn log(&mut self, entry: &Entry) -> Result<(), RecordError> {
        let frame = ft_log::encode_entry(entry);
        self.out.write_all(&frame).map_err(RecordError::Write)?;
        self.stats.count(entry, frame.len());
        if let (Entry::Delta(_), Some(c)) = (entry, &self.counters) {
            c.deltas.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Flush the log stream.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.out.flush().map_err(RecordError::Write)
    }

    /// A checkpoint delta: vCPU and devices now, and every page dirtied since the last
    /// (or, `full`, every non-zero page).
    #[allow(clippy::too_many_arguments)]
    pub fn take_delta(
        &mut self,
        fd: &VcpuFd,
        mem: &GuestMemoryMmap,
        platform: &Platform,
        ordinal: u64,
        time_ns: u64,
        halted: bool,
        full: bool,
    ) -> Result<Delta, RecordError> {
        let vcpu = wire::encode("vCPU state", &VcpuState::save(fd, ordinal, halted)?)?;
        let devices = wire::encode("device state", &platform.state())?;
        // Pages the VMM's devices wrote (disk reads): KVM's dirty log does not see them.
        let mut gpas = platform.take_device_pages();
        for (slot, region) in mem.iter().enumerate() {
            let start = region.start_addr().raw_value();
            let bitmap = self
                .vm
                .get_dirty_log(slot as u32, region.len() as usize)
                .map_err(|source| RecordError::DirtyLog {
                    slot: slot as u32,
                    source,
                })?;
            // Read (and so cleared) for every slot; a full checkpoint lists all pages below.
            if full {
                continue;
            }
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let bit = bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    gpas.push(start + (w as u64 * 64 + bit) * PAGE_SIZE);
                }
            }
        }
        let (gpas, listing) = if full {
            (crate::memory::page_addresses(mem).collect(), Listing::Full)
        } else {
            (gpas, Listing::Dirty)
        };
        let pages = crate::pagesets::encode(&mut self.pages, mem, gpas, listing)?;
        crate::pagecheck::at_delta(mem, ordinal);
        let (state_encoding, vcpu, devices) = if self.pages.encoding() == PageEncoding::Raw {
            (StateEncoding::Raw, vcpu, devices)
        } else {
            (
                StateEncoding::XorLz4,
                self.vcpu_state.encode(&vcpu),
                self.device_state.encode(&devices),
            )
        };
        Ok(Delta {
            ordinal,
            time_ns,
            full,
            state_encoding,
            vcpu,
            devices,
            pages,
        })
    }
}

/// A digest of the machine state: all of RAM, the vCPU's registers, the device states.
pub fn digest(
    fd: &VcpuFd,
    mem: &GuestMemoryMmap,
    platform: &Platform,
) -> Result<Digest, RecordError> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = (buf.len() as u64).min(len - done) as usize;
            mem.read_slice(&mut buf[..n], GuestAddress(start + done))?;
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    let state = VcpuState::save(fd, 0, false)?;
    let vcpu = wire::encode("vCPU state", &(&state.regs, &state.sregs))?;
    let devices = wire::encode("device state", &platform.state())?;
    tracing::debug!(devices = ?platform.state(), "device state at the digest");
    Ok(Digest {
        memory_crc32: h.finalize(),
        vcpu_crc32: crc32fast::hash(&vcpu),
        devices_crc32: crc32fast::hash(&devices),
    })
}
