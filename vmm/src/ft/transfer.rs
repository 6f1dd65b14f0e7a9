//! State transfer from a running primary to a joining backup, as in live migration: all
//! non-zero guest memory is sent while the guest runs, then the pages it dirtied meanwhile
//! (KVM's dirty log), round after round until few are left; then the primary pauses
//! briefly, sends the last dirty pages and the machine state, starts logging to the
//! channel and resumes. Every operation of the guest is thus before the transfer (in the
//! state) or after it (in the log).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_log::channel::{encode_channel_header, ToBackup};
use ft_log::pages::{Listing, PageCodecError, PageEncoder, PageEncoding};
use serde::{Deserialize, Serialize};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::link::{send, LinkError};
use super::pipe::Pipe;
use super::secure::SecureStream;
use crate::clock::ClockMode;
use crate::counters::LiveCounters;
use crate::machine::Vm;
use crate::record::Recorder;
use crate::state::VmState;
use crate::vcpu::LogMode;

/// Bytes per guest page (a usize for buffers).
const PAGE: usize = crate::memory::PAGE_SIZE as usize;
/// Pages per message.
const BATCH: usize = 256;
/// Pre-copy rounds at most, and the dirty set small enough to stop early.
const MAX_ROUNDS: usize = 8;
const FEW_PAGES: usize = 64;
/// A backup that stops reading during the transfer fails it after this long, rather than
/// holding the primary (and, in the final round, its paused guest) forever.
const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// Why a state transfer failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The channel failed during the transfer.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Primary: KVM's dirty page log could not be read.
    #[error("cannot read the dirty page log")]
    DirtyLog(#[source] kvm_ioctls::Error),
    /// Primary: guest memory could not be read.
    #[error("cannot read guest memory for the transfer")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Primary: the vCPU did not pause, save its state or start logging.
    #[error("the vCPU did not pause, save its state or start logging for the transfer")]
    Vcpu(#[from] crate::vcpu::VcpuError),
    /// Primary: the recorder for the live log could not be started.
    #[error("cannot start logging")]
    Record(#[from] crate::record::RecordError),
    /// A message of the transfer is malformed or out of place.
    #[error("the primary sent an invalid {what}: {reason}")]
    Invalid {
        /// What was invalid: "hello", "page", "machine state", "disk transfer", ...
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The machine state did not encode (primary) or decode (backup).
    #[error(transparent)]
    State(#[from] crate::state::wire::WireError),
    /// Backup: a batch of pages does not decode.
    #[error("the primary sent pages that do not decode")]
    Pages(#[from] PageCodecError),
    /// Primary: pages could not be encoded.
    #[error("cannot encode pages for the transfer")]
    Encode(#[from] crate::pagesets::PageSetError),
    /// Backup: the transfer did not complete within this limit.
    #[error("the state transfer did not complete within {0:?}")]
    Timeout(Duration),
    /// Primary: a disk image could not be read.
    #[error("cannot read disk {index} for the transfer")]
    DiskRead {
        /// The disk's index, in device order.
        index: usize,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// Backup: the transferred disk could not be written into (or synced to) this host's copy.
    #[error("cannot write the transferred disk {index} into this backup's copy")]
    DiskWrite {
        /// The disk's index, in device order.
        index: usize,
        /// Why the copy failed.
        #[source]
        source: std::io::Error,
    },
}

/// Everything about the machine that is not its memory, as a primary sends it (in the
/// encoding of [`crate::state::wire`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// The paused VM apart from its memory (vCPU, devices, clock).
    pub vm: VmState,
    /// How guest time advances.
    pub clock: ClockMode,
    /// Guest memory size in MiB.
    pub mem_mib: u64,
    /// Where the console stream stands at the state.
    pub console_offset: u64,
    /// The guest's console position where the stream began.
    pub console_base: u64,
}

/// What the primary measured of a transfer.
#[derive(Debug, Default, Clone)]
pub struct TransferReport {
    /// Rounds of pages sent while the guest ran (the first, of all memory, included; the
    /// final paused one not).
    pub rounds: usize,
    /// Pages sent, over all rounds.
    pub pages_sent: u64,
    /// Disk bytes sent (chunks of zeros count as none).
    pub disk_bytes_sent: u64,
    /// Bytes of the page messages (encoded pages and their framing).
    pub page_bytes: u64,
    /// How long the guest was paused for the final round.
    pub paused_for: Duration,
    /// How long the whole transfer took.
    pub took: Duration,
    /// The exit ordinal of the state sent: the backup's log starts after it.
    pub ordinal: u64,
}

/// Page numbers (gpa) dirtied since the last call, for every memory slot.
fn dirty_pages(vm: &Vm) -> Result<Vec<u64>, TransferError> {
    let mut out = Vec::new();
    for (slot, region) in vm.memory.iter().enumerate() {
        let start = region.start_addr().raw_value();
        let bitmap = vm
            .vm_fd
            .get_dirty_log(slot as u32, region.len() as usize)
            .map_err(TransferError::DirtyLog)?;
        for (w, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                out.push(start + (w as u64 * 64 + bit) * PAGE as u64);
            }
        }
    }
    Ok(out)
}

/// Send the pages at `gpas` (ascending) as they are now, encoded against what the backup
/// got before; `skip_zero`: leave out zero pages (the first round, onto zeroed memory).
/// Counts pages and bytes sent into `report`.
fn send_pages(
    out: &mut impl Write,
    mem: &GuestMemoryMmap,
    enc: &mut PageEncoder,
    gpas: impl Iterator<Item = u64>,
    skip_zero: bool,
    report: &mut TransferReport,
) -> Result<(), TransferError> {
    let mut flush = |set: ft_log::pages::PageSet, out: &mut dyn Write| {
        report.pages_sent += set.len() as u64;
        let frame = ft_log::encode_message(&ToBackup::Pages(set));
        report.page_bytes += frame.len() as u64;
        out.write_all(&frame).map_err(LinkError::from)
    };
    let mut data = vec![0u8; PAGE];
    let mut batch = enc.batch(Listing::Changed);
    let mut in_batch = 0;
    for gpa in gpas {
        mem.read_slice(&mut data, GuestAddress(gpa))?;
        if skip_zero && data.iter().all(|&b| b == 0) {
            continue;
        }
        batch.push(gpa, &data)?;
        in_batch += 1;
        if in_batch == BATCH {
            flush(batch.finish()?, out)?;
            batch = enc.batch(Listing::Changed);
            in_batch = 0;
        }
    }
    let set = batch.finish()?;
    if !set.is_empty() {
        flush(set, out)?;
    }
    Ok(())
}

/// Primary: transfer the running VM to the backup on `stream` and start logging into
/// `log`. The VM is left running (it was running before).
pub fn send_state(
    vm: &Vm,
    stream: &mut SecureStream,
    hello: ToBackup,
    log: &Pipe,
    counters: Arc<LiveCounters>,
    sink: &super::console::ConsoleSink,
    encoding: PageEncoding,
) -> Result<TransferReport, TransferError> {
    let started = Instant::now();
    let mut report = TransferReport::default();
    stream
        .set_write_timeout(Some(WRITE_LIMIT))
        .map_err(LinkError::from)?;
    let mut out =
        std::io::BufWriter::with_capacity(1 << 20, stream.try_clone().map_err(LinkError::from)?);
    out.write_all(&encode_channel_header())
        .map_err(LinkError::from)?;
    send(&mut out, &hello)?;
    // Pages go as differences from what the backup got before; the log then goes on
    // from the same copy (the backup's memory when the transfer ends).
    let mut enc = PageEncoder::new(encoding, crate::pagesets::ranges(&vm.memory));
    // Round 0: everything, from a clean dirty log on (the disks' too).
    let (_tracking, disk_bytes) = super::disk_copy::send_all(&mut out, &vm.disk_backends)?;
    report.disk_bytes_sent = disk_bytes;
    dirty_pages(vm)?;
    send_pages(
        &mut out,
        &vm.memory,
        &mut enc,
        crate::memory::page_addresses(&vm.memory),
        true,
        &mut report,
    )?;
    report.rounds = 1;
    loop {
        let dirty = dirty_pages(vm)?;
        tracing::info!(
            round = report.rounds,
            pages = dirty.len(),
            "state transfer: dirty pages"
        );
        if dirty.len() <= FEW_PAGES || report.rounds >= MAX_ROUNDS {
            // Too few to be worth another round: send them with the final pause.
            let pause = Instant::now();
            vm.vcpu.pause(Duration::from_secs(10))?;
            let mut last = dirty;
            last.extend(dirty_pages(vm)?);
            last.sort_unstable();
            last.dedup();
            send_pages(
                &mut out,
                &vm.memory,
                &mut enc,
                last.into_iter(),
                false,
                &mut report,
            )?;
            report.disk_bytes_sent += super::disk_copy::send_dirty(&mut out, &vm.disk_backends)?;
            let state = vm.vcpu.save_state()?;
            report.ordinal = state.vcpu.ordinal;
            let mut rec = Recorder::new(Box::new(log.clone()), vm.vm_fd.clone(), enc)?
                .with_counters(counters);
            rec.log(&ft_log::Entry::Start {
                wall_clock_unix_secs: state.platform.cmos.base_unix_secs,
            })?;
            // Output from here on waits for the backup; what came before is in the state.
            sink.set_alone(false);
            let machine = MachineState {
                vm: state,
                clock: vm.clock.mode(),
                mem_mib: vm.mem_mib,
                console_offset: sink.offset(),
                console_base: sink.base(),
            };
            let bytes = crate::state::wire::encode("machine state", &machine)?;
            send(
                &mut out,
                &ToBackup::Machine {
                    ordinal: report.ordinal,
                    state: bytes,
                },
            )?;
            out.flush().map_err(LinkError::from)?;
            // Logging starts exactly where the state ends.
            vm.vcpu.set_log(LogMode::Record(Box::new(rec)))?;
            vm.vcpu.resume();
            report.paused_for = pause.elapsed();
            break;
        }
        send_pages(
            &mut out,
            &vm.memory,
            &mut enc,
            dirty.into_iter(),
            false,
            &mut report,
        )?;
        report.disk_bytes_sent += super::disk_copy::send_dirty(&mut out, &vm.disk_backends)?;
        report.rounds += 1;
    }
    report.took = started.elapsed();
    // The live log stalls on a slow backup by design (the primary's buffer fills); its
    // failure is judged by the heartbeats, not by a write timeout.
    stream.set_write_timeout(None).map_err(LinkError::from)?;
    Ok(report)
}

mod receive;
pub use receive::{receive_state, Received};
