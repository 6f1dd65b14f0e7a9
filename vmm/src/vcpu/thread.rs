//! The vCPU thread's life: Paused until told to run, Running through the exit loop until
//! a command pauses it or a stop reason ends it, then Finished (its report handed back).

use std::io::Write;

use super::{LogMode, Vcpu, VcpuCommand, VcpuError, VcpuEvent, VcpuReport};
use crate::state::VcpuState;
use crate::stop::StopReason;

/// What the thread does next.
pub(super) enum Mode {
    Running,
    Paused,
}

impl Vcpu {
    pub(super) fn run(mut self) -> VcpuReport {
        if let Some((k, _)) = &self.kicker {
            k.register_current_thread();
        }
        let stop = match self.repair_after_state_load() {
            Ok(()) => self.state_machine(),
            Err(e) => StopReason::Kvm(e.to_string()),
        };
        // Where the guest was, for whoever asks (`FTVM_LOG=ftvm::stop=info`): a test whose
        // guest stopped answering stops the VMM and shows this line.
        tracing::info!(
            target: "ftvm::stop",
            "vCPU at stop after {} exits: {}, IF {}, rip {:#x}, {} input bytes waiting; {}",
            self.ordinal,
            if self.halted { "halted" } else { "running" },
            self.if_flag,
            self.fd.get_regs().map_or(0, |r| r.rip),
            self.input.len(),
            self.platform.interrupt_view()
        );
        // Stop the kicker before this thread ends: it holds our pthread id.
        self.metrics.kicks_sent = self.kicker.as_ref().map_or(0, |(k, _)| k.kicks_sent());
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

    pub(super) fn on_command(&mut self, cmd: VcpuCommand, mode: &mut Mode) -> Option<StopReason> {
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

    /// The vCPU state was just loaded (booted, restored, transferred, a checkpoint): the
    /// SYSCALL repair watches the loaded guest from its next instruction.
    pub(super) fn repair_after_state_load(&mut self) -> Result<(), crate::compat::CompatError> {
        match self.syscall_repair.as_mut() {
            Some(repair) => {
                repair.after_state_load(&self.fd, &self.memory, self.ordinal, &mut self.breakpoints)
            }
            None => Ok(()),
        }
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
