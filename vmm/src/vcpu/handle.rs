//! The controller's side of the vCPU thread: start it, pause and resume it, save its
//! state, switch its log, and collect its report.

use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use vmm_sys_util::signal::Killable;

use super::{LogMode, Vcpu, VcpuCommand, VcpuError, VcpuEvent, VcpuMetrics, VcpuParts, VcpuReport};
use crate::stop::StopReason;

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
        let kicker = match parts.kick {
            Some(purpose) => Some((
                crate::kicker::Kicker::spawn(parts.clock.clone(), kick_signal())
                    .map_err(VcpuError::Spawn)?,
                purpose,
            )),
            None => None,
        };
        if let (Some((k, purpose)), Some(rx)) = (&kicker, &parts.net_rx) {
            if let Some(handle) = k.handle() {
                rx.set_kicker(handle, purpose.event_bound_once_live());
            }
        }
        parts
            .exit_ordinal
            .store(parts.ordinal, std::sync::atomic::Ordering::SeqCst);
        let mut log = parts.log;
        if let (LogMode::Replay(replayer), Some(sink)) = (&mut log, &parts.held_output) {
            let sink = sink.clone();
            replayer.on_held_output(Box::new(move |ordinal, position, bytes| {
                sink.adopt(ordinal, position, bytes)
            }));
        }
        let vcpu = Vcpu {
            live_input: parts.live_input,
            delta_request: parts.delta_request,
            held_output: parts.held_output,
            exit_ordinal: parts.exit_ordinal,
            last_kick_delivery_ns: 0,
            stall_deadline: u64::MAX,
            start_ns: parts.clock.live_ns(),
            log,
            log_failure: None,
            last_logged_time: u64::MAX,
            kicker,
            pending_since: None,
            pause_request: parts.pause_request,
            syscall_repair: parts.syscall_repair,
            breakpoints: Default::default(),
            kick_kept_armed: false,
            boot_phase: parts
                .boot_event_bound_ns
                .filter(|_| {
                    matches!(
                        parts.kick,
                        Some(crate::kicker::KickPurpose::EventBound { .. })
                    )
                })
                .map(super::boot_phase::BootPhase::new),
            placement: super::points::Placement::new(parts.exact_breakpoints),
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

    /// Tell the thread to run the guest; does not wait for it to confirm.
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
