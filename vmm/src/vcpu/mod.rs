//! The vCPU thread: a small state machine (Running / Paused / Finished) driven over a
//! channel, and the exit loop that routes exits to the buses and delivers interrupts.
//!
//! Interrupts reach the guest only at *synchronous* exits (port I/O, MMIO, HLT): exits the
//! guest causes itself, at points that are the same on every run. Each one advances the
//! exit ordinal. Exits the host causes (a signal kicking the vCPU out of KVM_RUN) never
//! advance it and never deliver anything.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use kvm_ioctls::VcpuFd;

use crate::clock::VmClock;
use crate::platform::Platform;
use crate::stop::StopReason;

mod boot_phase;
mod checkpoint;
mod exits;
mod finish;
mod guest_context;
mod handle;
mod logged;
mod net_input;
pub mod points;
mod record_core;
mod replay_core;
mod replaying;
mod thread;

pub use boot_phase::DEFAULT_BOOT_EVENT_BOUND_NS;
pub use handle::VcpuHandle;
use thread::Mode;

pub use logged::{LogMode, LogReport};

/// Commands the controller sends to the vCPU thread.
pub enum VcpuCommand {
    /// Run the guest (if paused).
    Resume,
    /// Pause at the next exit (if running).
    Pause,
    /// Save the vCPU and device state; answered only while paused.
    SaveState(Sender<Result<crate::state::VmState, VcpuError>>),
    /// Start (or stop) logging from here: a backup has joined (or been lost). Answered
    /// only while paused, with the log mode it replaced.
    SetLog(LogMode, Sender<Result<LogMode, VcpuError>>),
    /// Stop for good.
    Finish,
}

/// What the vCPU thread reports back.
#[derive(Debug)]
pub enum VcpuEvent {
    /// The thread started running the guest.
    Resumed,
    /// The thread paused and takes commands only.
    Paused,
    /// The thread has ended; the report follows from `join`.
    Stopped(StopReason),
    /// A live backup replayed all of its primary's log and now runs the guest live.
    WentLive {
        /// Exit ordinal at which the guest went live.
        ordinal: u64,
        /// What the replay of the primary's log verified and applied.
        replay: crate::replay::ReplayStats,
    },
}

/// Why the vCPU thread could not start, or could not carry out a command.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A command that needs a paused vCPU came while it was running.
    #[error("the vCPU must be paused to save its state")]
    NotPaused,
    /// The thread has already stopped, for this reason.
    #[error("the vCPU thread has stopped: {0}")]
    Stopped(StopReason),
    /// The thread did not confirm a pause within this time.
    #[error("the vCPU did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// KVM could not report part of the vCPU's state.
    #[error("cannot read the vCPU's {what}")]
    Get {
        /// Which state ("registers", "MSRs", ...).
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused part of a vCPU state being loaded.
    #[error("cannot load the vCPU's {what}")]
    Set {
        /// Which state ("registers", "MSRs", ...).
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The run that completes the last exit's I/O inside KVM failed.
    #[error("cannot complete the vCPU's last exit")]
    Settle(#[source] kvm_ioctls::Error),
    /// KVM's MSR list could not be built for this many MSRs.
    #[error("cannot build KVM's list of {0} MSRs")]
    MsrList(usize),
    /// The devices could not be loaded from a state, or the vCPU made another exit while
    /// its last I/O completed.
    #[error("cannot reload the devices: {0}")]
    Restore(String),
    /// The vCPU or kicker thread could not be started.
    #[error("cannot start the vCPU thread")]
    Spawn(#[source] std::io::Error),
    /// The handler for the signal that kicks the vCPU out of KVM_RUN could not be
    /// installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// Counters the vCPU keeps over a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VcpuMetrics {
    /// Port reads handled.
    pub pio_in: u64,
    /// Port writes handled.
    pub pio_out: u64,
    /// MMIO reads handled.
    pub mmio_read: u64,
    /// MMIO writes handled.
    pub mmio_write: u64,
    /// HLT exits.
    pub hlt: u64,
    /// Interrupts injected into the guest.
    pub interrupts_injected: u64,
    /// Emulation failures repaired by the host-compatibility module (synchronous exits).
    pub compat: crate::compat::CompatCounts,
    /// KVM_RUN interrupted by the host (kicks); never counted as ordinals.
    pub host_exits: u64,
    /// Interrupts delivered at a kick because they waited longer than the event bound.
    pub kicked_injections: u64,
    /// Kick signals the kicker sent, retries of lost ones included.
    pub kicks_sent: u64,
    /// Kicks taken under the boot phase's longer event bound (see [`boot_phase`]).
    pub boot_kicks: u64,
    /// How kicks were shipped (points or deltas) and points found.
    pub points: points::PointCounts,
}

/// What a finished vCPU thread hands back.
#[derive(Debug)]
pub struct VcpuReport {
    /// Why the vCPU stopped.
    pub stop: StopReason,
    /// Record/replay results, when the run logged or replayed.
    pub log: Option<LogReport>,
    /// Synchronous exits at the stop, counted from the machine's start.
    pub ordinal: u64,
    /// The run's counters.
    pub metrics: VcpuMetrics,
}

/// Everything the vCPU thread owns.
pub struct Vcpu {
    log: LogMode,
    /// Serial input to switch to when a live backup goes live.
    live_input: Option<Receiver<Vec<u8>>>,
    /// Set by a primary whose backup asked for a checkpoint delta (it diverged).
    delta_request: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// A pair member's console under the output rule: a primary logs what it holds
    /// before a full checkpoint, a diverged backup's replay takes that in.
    held_output: Option<Arc<crate::ft::console::ConsoleSink>>,
    /// The ordinal of the last synchronous exit, for whoever tags output with the exit
    /// that produced it (the output rule).
    exit_ordinal: Arc<std::sync::atomic::AtomicU64>,
    /// Live time of the last interrupt delivered at a kick.
    last_kick_delivery_ns: u64,
    /// Replay: live time by which the current run must have made an exit.
    stall_deadline: u64,
    /// Guest time when this VMM started running the guest (a restored VM starts late).
    start_ns: u64,
    /// A log write failed inside a step that cannot return it; stops the VM.
    log_failure: Option<StopReason>,
    /// Last guest time a recording logged (no duplicate time samples).
    last_logged_time: u64,
    kicker: Option<(crate::kicker::Kicker, crate::kicker::KickPurpose)>,
    /// The last KVM_RUN ended in a debug exit and left the kicker armed.
    kick_kept_armed: bool,
    /// A freshly loaded kernel's boot, while it lasts: a longer event bound.
    boot_phase: Option<boot_phase::BootPhase>,
    /// Since when (virtual ns) an interrupt has been pending without a chance to inject.
    pending_since: Option<u64>,
    pause_request: Arc<std::sync::atomic::AtomicBool>,
    syscall_repair: Option<crate::compat::syscall::SyscallRepair>,
    /// The debug registers, shared by the SYSCALL repair and the point search.
    breakpoints: crate::compat::breakpoints::Breakpoints,
    /// How events at kicks are placed, and the point being searched for.
    placement: points::Placement,
    fd: VcpuFd,
    memory_slots: crate::memory::MemorySlots,
    memory: vm_memory::GuestMemoryMmap,
    platform: Platform,
    clock: Arc<VmClock>,
    /// Synchronous exits so far.
    ordinal: u64,
    /// Stopped at HLT, waiting for an interrupt.
    halted: bool,
    /// RFLAGS.IF at the last exit.
    if_flag: bool,
    input: VecDeque<u8>,
    input_rx: Option<Receiver<Vec<u8>>>,
    /// Frames the NIC's TAP received, waiting for a point the log can name.
    net_rx: Option<Arc<crate::net::rx::RxQueue>>,
    /// `--profile`: where the guest is, sampled at exits (see [`crate::profile`]).
    profiler: Option<crate::profile::Profiler>,
    commands: Receiver<VcpuCommand>,
    events: Sender<VcpuEvent>,
    trace: Option<Box<dyn Write + Send>>,
    metrics: VcpuMetrics,
}

/// A synchronous exit, recorded for the trace before the next KVM_RUN.
enum SyncExit {
    /// Port or address, access size, value read or written.
    PioIn(u16, usize, u64),
    PioOut(u16, usize, u64),
    MmioRead(u64, usize, u64),
    MmioWrite(u64, usize, u64),
    Hlt,
    /// An emulation failure the compat module repaired.
    Repaired(crate::compat::Repair),
}

/// The guest-visible value of a short write, for traces and reports.
fn value_of(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Everything a vCPU thread is started with (see [`VcpuHandle::spawn`]).
pub struct VcpuParts {
    /// See `Vcpu::live_input`.
    pub live_input: Option<Receiver<Vec<u8>>>,
    /// See `Vcpu::delta_request`.
    pub delta_request: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// See `Vcpu::held_output`.
    pub held_output: Option<Arc<crate::ft::console::ConsoleSink>>,
    /// See `Vcpu::exit_ordinal`.
    pub exit_ordinal: Arc<std::sync::atomic::AtomicU64>,
    /// Whether the vCPU records, replays or neither.
    pub log: LogMode,
    /// Why and when the vCPU is kicked out of KVM_RUN (None: never, as under the
    /// deterministic `exits` clock).
    pub kick: Option<crate::kicker::KickPurpose>,
    /// A fresh boot's event bound until the guest is first kicked in user mode (None:
    /// the live bound from the start; see [`boot_phase`]).
    pub boot_event_bound_ns: Option<u64>,
    /// Set by anyone (e.g. the console watcher) to make the vCPU pause itself at the next
    /// synchronous exit, before the guest runs on.
    pub pause_request: Arc<std::sync::atomic::AtomicBool>,
    /// Present when this host needs the SYSCALL-from-user repair.
    pub syscall_repair: Option<crate::compat::syscall::SyscallRepair>,
    /// Whether this host's hardware breakpoints are exact in guest kernel mode (probed),
    /// so that events at kicks can be placed by breakpoint (see [`points`]).
    pub exact_breakpoints: bool,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// To make KVM forget translations after guest memory was rewritten.
    pub memory_slots: crate::memory::MemorySlots,
    /// Guest memory.
    pub memory: vm_memory::GuestMemoryMmap,
    /// The devices and buses exits are routed to.
    pub platform: Platform,
    /// The guest's virtual time.
    pub clock: Arc<VmClock>,
    /// Bytes for the guest's serial input, if any.
    pub input_rx: Option<Receiver<Vec<u8>>>,
    /// Where to write a line per synchronous exit and injected interrupt (`--trace-exits`).
    pub trace: Option<Box<dyn Write + Send>>,
    /// Where a restored VM continues from (0 and not halted for a fresh boot).
    pub ordinal: u64,
    /// Whether the vCPU starts halted (see `ordinal`).
    pub halted: bool,
    /// Received frames (run and record with a NIC on a TAP).
    pub net_rx: Option<Arc<crate::net::rx::RxQueue>>,
}
