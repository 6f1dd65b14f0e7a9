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
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::Killable;

use crate::clock::VmClock;
use crate::platform::Platform;
use crate::state::VcpuState;
use crate::stop::StopReason;

mod checkpoint;
mod exits;
mod finish;
mod guest_context;
mod logged;
mod net_input;
mod replay_core;
mod replaying;

pub use logged::{LogMode, LogReport};

/// Commands the controller sends to the vCPU thread.
pub enum VcpuCommand {
    Resume,
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
    Resumed,
    Paused,
    /// The thread has ended; the report follows from `join`.
    Stopped(StopReason),
    /// A live backup replayed all of its primary's log and now runs the guest live.
    WentLive {
        ordinal: u64,
        replay: crate::replay::ReplayStats,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("the vCPU must be paused to save its state")]
    NotPaused,
    #[error("the vCPU thread has stopped: {0}")]
    Stopped(StopReason),
    #[error("the vCPU did not pause within {0:?}")]
    PauseTimeout(Duration),
    #[error("cannot read the vCPU's {what}")]
    Get {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot load the vCPU's {what}")]
    Set {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot complete the vCPU's last exit")]
    Settle(#[source] kvm_ioctls::Error),
    #[error("cannot build KVM's list of {0} MSRs")]
    MsrList(usize),
    #[error("cannot reload the devices: {0}")]
    Restore(String),
    #[error("cannot start the vCPU thread")]
    Spawn(#[source] std::io::Error),
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// Counters the vCPU keeps over a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VcpuMetrics {
    pub pio_in: u64,
    pub pio_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub interrupts_injected: u64,
    /// Emulation failures repaired by the host-compatibility module (synchronous exits).
    pub compat: crate::compat::CompatCounts,
    /// KVM_RUN interrupted by the host (kicks); never counted as ordinals.
    pub host_exits: u64,
    /// Interrupts delivered at a kick because they waited longer than the event bound.
    pub kicked_injections: u64,
}

/// What a finished vCPU thread hands back.
#[derive(Debug)]
pub struct VcpuReport {
    pub stop: StopReason,
    /// Record/replay results, when the run logged or replayed.
    pub log: Option<LogReport>,
    pub ordinal: u64,
    pub metrics: VcpuMetrics,
}

/// Everything the vCPU thread owns.
pub struct Vcpu {
    log: LogMode,
    /// Serial input to switch to when a live backup goes live.
    live_input: Option<Receiver<Vec<u8>>>,
    /// Set by a primary whose backup asked for a checkpoint delta (it diverged).
    delta_request: Option<Arc<std::sync::atomic::AtomicBool>>,
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
    kicker: Option<(crate::kicker::Kicker, u64)>,
    /// Since when (virtual ns) an interrupt has been pending without a chance to inject.
    pending_since: Option<u64>,
    pause_request: Arc<std::sync::atomic::AtomicBool>,
    syscall_repair: Option<crate::compat::syscall::SyscallRepair>,
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

pub struct VcpuParts {
    /// See `Vcpu::live_input`.
    pub live_input: Option<Receiver<Vec<u8>>>,
    /// See `Vcpu::delta_request`.
    pub delta_request: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// See `Vcpu::exit_ordinal`.
    pub exit_ordinal: Arc<std::sync::atomic::AtomicU64>,
    pub log: LogMode,
    /// How long an event may wait for a synchronous exit before the vCPU is kicked
    /// (None: never kick, as in the deterministic `exits` clock).
    pub event_bound_ns: Option<u64>,
    /// Set by anyone (e.g. the console watcher) to make the vCPU pause itself at the next
    /// synchronous exit, before the guest runs on.
    pub pause_request: Arc<std::sync::atomic::AtomicBool>,
    /// Present when this host needs the SYSCALL-from-user repair.
    pub syscall_repair: Option<crate::compat::syscall::SyscallRepair>,
    pub fd: VcpuFd,
    /// To make KVM forget translations after guest memory was rewritten.
    pub memory_slots: crate::memory::MemorySlots,
    pub memory: vm_memory::GuestMemoryMmap,
    pub platform: Platform,
    pub clock: Arc<VmClock>,
    pub input_rx: Option<Receiver<Vec<u8>>>,
    pub trace: Option<Box<dyn Write + Send>>,
    /// Where a restored VM continues from (0 and not halted for a fresh boot).
    pub ordinal: u64,
    pub halted: bool,
    /// Received frames (run and record with a NIC on a TAP).
    pub net_rx: Option<Arc<crate::net::rx::RxQueue>>,
}

/// The controller's side of a vCPU thread.
pub struct VcpuHandle {
    commands: Sender<VcpuCommand>,
    events: Receiver<VcpuEvent>,
    thread: Option<JoinHandle<VcpuReport>>,
}

/// The signal that kicks the vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being interrupted is the point (KVM_RUN returns EINTR).
}

impl VcpuHandle {
    /// Start the vCPU thread, paused.
    pub fn spawn(parts: VcpuParts) -> Result<Self, VcpuError> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(VcpuError::Signal)?;
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (evt_tx, evt_rx) = crossbeam_channel::unbounded();
        // A restored vCPU may be halted; whether it can be woken is in its RFLAGS.
        let if_flag = parts.fd.get_regs().is_ok_and(|r| r.rflags & 0x200 != 0);
        let kicker = match parts.event_bound_ns {
            Some(bound) => Some((
                crate::kicker::Kicker::spawn(parts.clock.clone(), kick_signal())
                    .map_err(VcpuError::Spawn)?,
                bound,
            )),
            None => None,
        };
        if let (Some((k, bound)), Some(rx)) = (&kicker, &parts.net_rx) {
            if let Some(handle) = k.handle() {
                rx.set_kicker(handle, *bound);
            }
        }
        parts
            .exit_ordinal
            .store(parts.ordinal, std::sync::atomic::Ordering::SeqCst);
        let vcpu = Vcpu {
            live_input: parts.live_input,
            delta_request: parts.delta_request,
            exit_ordinal: parts.exit_ordinal,
            last_kick_delivery_ns: 0,
            stall_deadline: u64::MAX,
            start_ns: parts.clock.live_ns(),
            log: parts.log,
            log_failure: None,
            last_logged_time: u64::MAX,
            kicker,
            pending_since: None,
            pause_request: parts.pause_request,
            syscall_repair: parts.syscall_repair,
            fd: parts.fd,
            memory_slots: parts.memory_slots,
            memory: parts.memory,
            platform: parts.platform,
            clock: parts.clock,
            ordinal: parts.ordinal,
            halted: parts.halted,
            if_flag,
            input: VecDeque::new(),
            input_rx: parts.input_rx,
            net_rx: parts.net_rx,
            profiler: crate::profile::requested(),
            commands: cmd_rx,
            events: evt_tx,
            trace: parts.trace,
            metrics: VcpuMetrics::default(),
        };
        let thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || vcpu.run())
            .map_err(VcpuError::Spawn)?;
        Ok(Self {
            commands: cmd_tx,
            events: evt_rx,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: VcpuCommand) {
        // A closed channel means the thread has stopped; the caller learns that from the
        // events channel.
        let _ = self.commands.send(cmd);
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            // An error means the thread has already exited, which is what a kick wants.
            let _ = t.kill(kick_signal());
        }
    }

    pub fn resume(&self) {
        self.send(VcpuCommand::Resume);
    }

    /// Pause and wait until the thread confirms.
    pub fn pause(&self, timeout: Duration) -> Result<(), VcpuError> {
        self.send(VcpuCommand::Pause);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Kick repeatedly: a signal that lands just before KVM_RUN is lost.
            self.kick();
            match self.events.recv_timeout(Duration::from_millis(5)) {
                Ok(VcpuEvent::Paused) => return Ok(()),
                Ok(VcpuEvent::Stopped(r)) => return Err(VcpuError::Stopped(r)),
                Ok(VcpuEvent::Resumed) | Ok(VcpuEvent::WentLive { .. }) => {}
                Err(RecvTimeoutError::Timeout) if std::time::Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => return Err(VcpuError::PauseTimeout(timeout)),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VcpuError::Stopped(StopReason::Finished))
                }
            }
        }
    }

    /// Save the whole VM state (the vCPU must be paused).
    pub fn save_state(&self) -> Result<crate::state::VmState, VcpuError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(VcpuCommand::SaveState(tx));
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| VcpuError::Stopped(StopReason::Finished))?
    }

    /// Replace the log mode (the vCPU must be paused); returns the previous one.
    pub fn set_log(&self, log: LogMode) -> Result<LogMode, VcpuError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(VcpuCommand::SetLog(log, tx));
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| VcpuError::Stopped(StopReason::Finished))?
    }

    /// Wait for the next event from the thread.
    pub fn next_event(&self, timeout: Duration) -> Option<VcpuEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Stop the thread (if it still runs) and collect its report.
    pub fn finish(&mut self) -> VcpuReport {
        self.send(VcpuCommand::Finish);
        let thread = self.thread.take();
        if let Some(t) = &thread {
            while !t.is_finished() {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        match thread.map(|t| t.join()) {
            Some(Ok(report)) => report,
            Some(Err(_)) | None => VcpuReport {
                stop: StopReason::VmmBug("the vCPU thread panicked".into()),
                log: None,
                ordinal: 0,
                metrics: VcpuMetrics::default(),
            },
        }
    }
}

/// What the thread does next.
enum Mode {
    Running,
    Paused,
}

impl Vcpu {
    fn run(mut self) -> VcpuReport {
        if let Some((k, _)) = &self.kicker {
            k.register_current_thread();
        }
        let stop = self.state_machine();
        // Stop the kicker before this thread ends: it holds our pthread id.
        self.kicker = None;
        let log = self.finish_log(&stop);
        self.clock.pause();
        if let Some(t) = self.trace.as_mut() {
            let _ = t.flush();
        }
        if let Some(p) = &self.profiler {
            match p.write() {
                Ok(()) => tracing::info!("guest profile written"),
                Err(e) => eprintln!("ftvm: {}", crate::ft::link::chain(&e)),
            }
        }
        let _ = self.events.send(VcpuEvent::Stopped(stop.clone()));
        VcpuReport {
            stop,
            log,
            ordinal: self.ordinal,
            metrics: self.metrics,
        }
    }

    fn state_machine(&mut self) -> StopReason {
        let mut mode = Mode::Paused;
        loop {
            match mode {
                Mode::Paused => match self.commands.recv() {
                    Ok(cmd) => match self.on_command(cmd, &mut mode) {
                        Some(stop) => return stop,
                        None => continue,
                    },
                    Err(_) => return StopReason::Finished,
                },
                Mode::Running => {
                    while let Ok(cmd) = self.commands.try_recv() {
                        if let Some(stop) = self.on_command(cmd, &mut mode) {
                            return stop;
                        }
                    }
                    if !matches!(mode, Mode::Running) {
                        continue;
                    }
                    if let Some(stop) = self.log_failure.take() {
                        return stop;
                    }
                    if let LogMode::Replay(r) = &mut self.log {
                        match r.live_log_ended() {
                            Ok(true) => self.go_live(),
                            Ok(false) => {}
                            Err(e) => return StopReason::Log(e.to_string()),
                        }
                    }
                    let recovering = matches!(&self.log, LogMode::Replay(r) if r.recovering);
                    let step = if recovering {
                        self.replay_recover()
                    } else if self.halted {
                        self.halted_step(&mut mode)
                    } else {
                        self.run_once()
                    };
                    if let Some(stop) = step {
                        return stop;
                    }
                    if self
                        .pause_request
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        self.clock.pause();
                        mode = Mode::Paused;
                        let _ = self.events.send(VcpuEvent::Paused);
                    }
                }
            }
        }
    }

    fn on_command(&mut self, cmd: VcpuCommand, mode: &mut Mode) -> Option<StopReason> {
        match cmd {
            VcpuCommand::Resume => {
                if matches!(mode, Mode::Paused) {
                    self.clock.resume();
                    *mode = Mode::Running;
                }
                let _ = self.events.send(VcpuEvent::Resumed);
            }
            VcpuCommand::Pause => {
                if matches!(mode, Mode::Running) {
                    self.clock.pause();
                    *mode = Mode::Paused;
                }
                let _ = self.events.send(VcpuEvent::Paused);
            }
            VcpuCommand::SaveState(reply) => {
                let result = match mode {
                    Mode::Paused => self.save_state(),
                    Mode::Running => Err(VcpuError::NotPaused),
                };
                let _ = reply.send(result);
            }
            VcpuCommand::SetLog(log, reply) => {
                let result = match mode {
                    Mode::Paused => {
                        // A recording that starts here owes nothing to earlier exits.
                        self.last_logged_time = u64::MAX;
                        if matches!(log, LogMode::Off) {
                            // Time froze at the last logged exit; it flows again.
                            self.clock.unfreeze();
                        }
                        Ok(std::mem::replace(&mut self.log, log))
                    }
                    Mode::Running => Err(VcpuError::NotPaused),
                };
                let _ = reply.send(result);
            }
            VcpuCommand::Finish => return Some(StopReason::Finished),
        }
        None
    }

    /// Tell the output rule which exit the guest is at.
    pub(super) fn publish_ordinal(&self) {
        self.exit_ordinal
            .store(self.ordinal, std::sync::atomic::Ordering::SeqCst);
    }

    /// Complete the last exit's I/O inside KVM (see kvm_ext::complete_pending_io) so
    /// that the vCPU state read or written next is the one the guest continues from.
    pub(super) fn settle(&mut self) -> Result<(), VcpuError> {
        match crate::kvm_ext::complete_pending_io(&mut self.fd) {
            Ok(true) => Ok(()),
            Ok(false) => Err(VcpuError::Restore(
                "the vCPU made another exit while its last I/O completed".into(),
            )),
            Err(source) => Err(VcpuError::Settle(source)),
        }
    }

    fn save_state(&mut self) -> Result<crate::state::VmState, VcpuError> {
        self.settle()?;
        let mut vcpu = VcpuState::save(&self.fd, self.ordinal, self.halted)?;
        let mut platform = self.platform.state();
        // An interrupt handed to KVM that the guest has not taken yet is given back to the
        // PIC in the saved state: the restored machine delivers it again rather than
        // relying on the host to carry the injection over (this host's KVM does not).
        if vcpu.events.interrupt.injected != 0 && platform.pic.give_back(vcpu.events.interrupt.nr) {
            vcpu.events.interrupt.injected = 0;
            vcpu.events.interrupt.nr = 0;
            // The same on this machine, so that it and one built from the state (a backup
            // after a state transfer) go on identically: both deliver it again at their
            // next exit, which the primary logs.
            self.fd
                .set_vcpu_events(&vcpu.events)
                .map_err(|source| VcpuError::Set {
                    what: "pending events",
                    source,
                })?;
            self.platform
                .load_state(platform.clone())
                .map_err(|e| VcpuError::Restore(e.to_string()))?;
        }
        Ok(crate::state::VmState {
            vcpu,
            platform,
            clock_ns: ftvm_devices::Clock::now_ns(&*self.clock),
        })
    }
}
