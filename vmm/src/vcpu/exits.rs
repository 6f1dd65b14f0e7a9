//! The exit loop: one KVM_RUN, routing its exit to the buses, counting synchronous exits,
//! and delivering interrupts at them (or, after the event bound, at a kick).

use std::ops::ControlFlow;
use std::time::Duration;

use kvm_ioctls::VcpuExit;

use super::{value_of, Mode, SyncExit, Vcpu};
use crate::kicker::KickPurpose;
use crate::stop::StopReason;

impl Vcpu {
    /// Arm the kicker for the earliest moment an event will have waited too long.
    pub(super) fn arm_kicker(&mut self) {
        let Some(purpose) = self.kicker.as_ref().map(|(_, p)| *p) else {
            return;
        };
        // Still armed from before a debug exit (see run_once): its deadline stands (or, if
        // it fired since, the kicker's retry). Disarmed, it is worked out again below.
        if std::mem::take(&mut self.kick_kept_armed)
            && self.kicker.as_ref().is_some_and(|(k, _)| k.is_armed())
        {
            return;
        }
        let bound = match purpose {
            KickPurpose::StallWatch { limit_ns } => {
                let limit_ns = self.replay_stall_limit(limit_ns);
                self.stall_deadline = self.clock.live_ns().saturating_add(limit_ns);
                if let Some((kicker, _)) = &self.kicker {
                    kicker.arm(self.stall_deadline);
                }
                return;
            }
            KickPurpose::EventBound { bound_ns } => self.event_bound(bound_ns),
        };
        let Some((kicker, _)) = &self.kicker else {
            return;
        };
        // After a kicked delivery the guest gets at least one more bound of run time
        // before the next kick: on hosts where its tick handler takes about a tick period,
        // kicking at every overdue edge would leave it nothing but timer interrupts, and
        // the PIC's fixed priority would starve every other line (the UART first).
        let earliest = self.last_kick_delivery_ns.saturating_add(bound);
        // While an interrupt window is requested KVM itself will exit as soon as the guest
        // can take an interrupt, and whatever is due is delivered there: kicking a guest
        // with IF=0 only makes it ask for the same window again, over and over.
        let window = self.fd.get_kvm_run().request_interrupt_window != 0;
        let timer = self
            .platform
            .next_deadline_ns()
            .filter(|_| !window)
            .map(|d| d.max(earliest).saturating_add(bound));
        let pending = self
            .pending_since
            .filter(|_| !window)
            .map(|t| t.max(earliest).saturating_add(bound));
        // Frames waiting in the receive queue, from when the first of them arrived.
        let frames = self.net_rx.as_ref().filter(|_| !window).and_then(|rx| {
            let at = rx.core().kick_at(bound)?;
            Some(at.max(earliest.saturating_add(bound)))
        });
        match timer.into_iter().chain(pending).chain(frames).min() {
            Some(at) => kicker.arm(at),
            None => kicker.disarm(),
        }
    }

    /// The vCPU was kicked out of KVM_RUN (or its requested interrupt window opened):
    /// deliver what has waited too long. If the guest cannot take an interrupt right now
    /// (IF=0, interrupt shadow), ask KVM to exit as soon as it can instead of kicking
    /// again and again.
    pub(super) fn on_kick(&mut self) {
        let bound = match self.kicker.as_ref().map(|(_, p)| *p) {
            None => return,
            Some(KickPurpose::StallWatch { .. }) => {
                // Kicks also come from pause requests: only a passed deadline is a stall.
                if self.clock.live_ns() >= self.stall_deadline {
                    self.replay_stalled();
                }
                return;
            }
            Some(KickPurpose::EventBound { bound_ns }) => self.event_bound(bound_ns),
        };
        let run = self.fd.get_kvm_run();
        run.request_interrupt_window = 0;
        self.if_flag = run.if_flag != 0;
        let ready = run.ready_for_interrupt_injection != 0 && self.if_flag;
        if !ready {
            // Nothing may change at a point that is not logged: wait for the window.
            let now = self.clock.live_ns();
            let due = self.pending_since.is_some()
                || self.platform.next_deadline_ns().is_some_and(|d| d <= now)
                || self
                    .net_rx
                    .as_ref()
                    .is_some_and(|rx| rx.core().kick_at(bound).is_some_and(|t| t <= now));
            if due {
                self.fd.get_kvm_run().request_interrupt_window = 1;
            }
            return;
        }
        self.boot_phase_at_kick();
        // A recording VMM delivers at this point only after naming it in the log (or,
        // where a breakpoint cannot find it again, logging the whole state here).
        self.record_kick();
        if self.deliver() {
            self.metrics.kicked_injections += 1;
            self.last_kick_delivery_ns = self.clock.live_ns();
        }
    }

    /// One KVM_RUN and the handling of its exit.
    pub(super) fn run_once(&mut self) -> Option<StopReason> {
        if let ControlFlow::Break(outcome) = self.replay_before_run() {
            return outcome;
        }
        self.sample_for_profile();
        self.arm_kicker();
        let result = self.fd.run();
        // A debug exit (breakpoints of the SYSCALL repair or of a point search, many per
        // millisecond) is a host artefact: the kick stays armed for the same deadline,
        // without waking the kicker thread to re-arm it.
        self.kick_kept_armed = matches!(result, Ok(VcpuExit::Debug(_)));
        if let Some((k, _)) = self.kicker.as_ref().filter(|_| !self.kick_kept_armed) {
            k.disarm();
        }
        super::logged::freeze_for_exit(&mut self.log, &self.clock, self.ordinal + 1);
        let sync = match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                let len = data.len();
                if !self.platform.pio.read(u64::from(port), data) {
                    return Some(
                        self.unknown_io(format!("read of {len} bytes from port {port:#x}")),
                    );
                }
                self.metrics.pio_in += 1;
                SyncExit::PioIn(port, len, value_of(data))
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let value = value_of(data);
                let len = data.len();
                if !self.platform.pio.write(u64::from(port), data) {
                    return Some(self.unknown_io(format!(
                        "write of {len} bytes ({value:#x}) to port {port:#x}"
                    )));
                }
                self.metrics.pio_out += 1;
                // A queue notify completes here, at this exit (see platform::pci).
                self.platform.process_devices();
                SyncExit::PioOut(port, len, value)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let len = data.len();
                if !self.platform.mmio.read(addr, data) {
                    return Some(
                        self.unknown_io(format!("read of {len} bytes from address {addr:#x}")),
                    );
                }
                self.metrics.mmio_read += 1;
                SyncExit::MmioRead(addr, len, value_of(data))
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let value = value_of(data);
                let len = data.len();
                if !self.platform.mmio.write(addr, data) {
                    return Some(self.unknown_io(format!(
                        "write of {len} bytes ({value:#x}) to address {addr:#x}"
                    )));
                }
                self.metrics.mmio_write += 1;
                self.platform.process_devices();
                SyncExit::MmioWrite(addr, len, value)
            }
            Ok(VcpuExit::Hlt) => {
                self.metrics.hlt += 1;
                self.halted = true;
                SyncExit::Hlt
            }
            Ok(VcpuExit::Shutdown) => return Some(StopReason::TripleFault { rip: self.rip() }),
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // union member KVM filled in.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                if internal.suberror == crate::compat::SUBERROR_EMULATION {
                    match crate::compat::repair_emulation_failure(
                        &self.fd,
                        &self.memory,
                        &mut self.metrics.compat,
                    ) {
                        // A skipped FWAIT is a host artefact, not an execution point: this
                        // host's emulator fails on it only in some FPU states of its own
                        // (a replay of the same guest took the repair where the recording
                        // ran straight through), so it must neither count as an ordinal
                        // nor deliver anything.
                        Ok(Some(crate::compat::Repair::Skipped)) => return None,
                        Ok(Some(repair)) => {
                            self.if_flag = false; // no interrupt on top of a queued exception
                            return self.after_sync_exit(SyncExit::Repaired(repair));
                        }
                        Ok(None) => {}
                        Err(e) => return Some(StopReason::Kvm(e.to_string())),
                    }
                }
                let n = (internal.ndata as usize).min(internal.data.len());
                let data = internal.data[..n].to_vec();
                return Some(StopReason::EmulationFailure {
                    suberror: internal.suberror,
                    rip: self.rip(),
                    data,
                });
            }
            Ok(VcpuExit::FailEntry(reason, _)) => return Some(StopReason::EntryFailure { reason }),
            Ok(VcpuExit::Debug(arch)) => return self.on_debug_exit(arch.pc),
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {
                self.metrics.host_exits += 1;
                self.on_kick();
                return None;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.metrics.host_exits += 1;
                self.on_kick();
                return None;
            }
            Ok(other) => return Some(StopReason::UnexpectedExit(format!("{other:?}"))),
            Err(e) => return Some(StopReason::Kvm(format!("KVM_RUN failed: {e}"))),
        };
        self.if_flag = self.fd.get_kvm_run().if_flag != 0;
        self.after_sync_exit(sync)
    }

    /// `--profile`: note where the guest is, if a sample is due (registers are only read).
    fn sample_for_profile(&mut self) {
        let Some(p) = self.profiler.as_mut() else {
            return;
        };
        let now = std::time::Instant::now();
        if !p.due(now) {
            return;
        }
        if let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) {
            let spot = crate::profile::Spot {
                rip: regs.rip,
                cpl: sregs.cs.dpl,
            };
            p.record(spot, now);
        }
    }

    pub(super) fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    pub(super) fn unknown_io(&self, what: String) -> StopReason {
        StopReason::UnknownIo {
            what,
            rip: self.rip(),
            ordinal: self.ordinal + 1,
        }
    }

    pub(super) fn after_sync_exit(&mut self, exit: SyncExit) -> Option<StopReason> {
        self.ordinal += 1;
        self.publish_ordinal();
        self.clock.on_exit();
        if self.trace.is_some() {
            let rip = self.rip();
            let line = match exit {
                SyncExit::PioIn(p, n, _) => {
                    format!("{} pio-in {rip:#x} port={p:#x} len={n}", self.ordinal)
                }
                SyncExit::PioOut(p, _, v) => {
                    format!("{} pio-out {rip:#x} port={p:#x} value={v:#x}", self.ordinal)
                }
                SyncExit::MmioRead(a, n, _) => {
                    format!("{} mmio-read {rip:#x} addr={a:#x} len={n}", self.ordinal)
                }
                SyncExit::MmioWrite(a, _, v) => format!(
                    "{} mmio-write {rip:#x} addr={a:#x} value={v:#x}",
                    self.ordinal
                ),
                SyncExit::Hlt => format!("{} hlt {rip:#x}", self.ordinal),
                SyncExit::Repaired(r) => format!("{} repaired {rip:#x} {r:?}", self.ordinal),
            };
            self.trace_line(&line);
        }
        if let Some(stop) = self.log_exit(&exit) {
            return Some(stop);
        }
        self.record_requested_delta();
        if let Some(stop) = self.platform.stop_request() {
            return Some(stop);
        }
        if let Some(repair) = self.syscall_repair.as_mut() {
            let bps = &mut self.breakpoints;
            if let Err(e) = repair.on_sync_exit(&self.fd, &self.memory, self.ordinal, bps) {
                return Some(StopReason::Kvm(e.to_string()));
            }
        }
        self.deliver();
        None
    }

    pub(super) fn trace_line(&mut self, line: &str) {
        if let Some(t) = self.trace.as_mut() {
            if writeln!(t, "{line}").is_err() {
                tracing::warn!("cannot write the exit trace; tracing stops");
                self.trace = None;
            }
        }
    }

    /// Move pending input and interrupt requests into the devices, and inject one
    /// interrupt if the guest can take it now. Returns whether it injected one.
    pub(super) fn deliver(&mut self) -> bool {
        self.deliver_input();
        self.deliver_frames();
        self.platform.update_interrupts();
        if !self.platform.interrupt_pending() {
            self.pending_since = None;
            return false;
        }
        // A vCPU halted in user space sits after its HLT with no interrupt shadow: it can
        // always take one (and a restored vCPU has no kvm_run readiness from a last exit).
        let ready = self.halted || self.fd.get_kvm_run().ready_for_interrupt_injection != 0;
        // A replayer injects exactly where the log says, nowhere else.
        if self.replaying() {
            return self.replay_interrupt();
        }
        if !(ready && self.if_flag) {
            if self.pending_since.is_none() {
                self.pending_since = Some(ftvm_devices::Clock::now_ns(&*self.clock));
            }
            return false;
        }
        self.pending_since = None;
        let Some(vector) = self.platform.acknowledge() else {
            return false;
        };
        self.log_interrupt(vector);
        self.inject(vector)
    }

    pub(super) fn inject(&mut self, vector: u8) -> bool {
        match crate::kvm_ext::inject_interrupt(&self.fd, vector) {
            Ok(()) => {
                self.metrics.interrupts_injected += 1;
                self.halted = false;
                if self.trace.is_some() {
                    let line = format!("{} irq vector={vector:#x}", self.ordinal);
                    self.trace_line(&line);
                }
                true
            }
            Err(e) => {
                tracing::error!(vector, "KVM_INTERRUPT failed: {e}");
                false
            }
        }
    }

    /// The vCPU is halted: wait for a timer deadline, input or a command.
    pub(super) fn halted_step(&mut self, mode: &mut Mode) -> Option<StopReason> {
        if self.replaying() {
            return self.replay_halted();
        }
        self.record_wake();
        self.deliver();
        if !self.halted {
            return None;
        }
        if !self.if_flag {
            return Some(StopReason::HaltedForever { rip: self.rip() });
        }
        let deadline = self.platform.next_deadline_ns();
        let wait = match deadline {
            Some(d) => self.clock.halt_until(d),
            None if self.input_rx.is_none() && self.input.is_empty() && self.net_rx.is_none() => {
                // No timer armed, no input left, no NIC: nothing can ever wake this guest.
                return Some(StopReason::HaltedForever { rip: self.rip() });
            }
            None => Duration::from_secs(3600),
        };
        if wait.is_zero() {
            return None;
        }
        let never = crossbeam_channel::never();
        let input = self.input_rx.as_ref().unwrap_or(&never);
        let never_frames = crossbeam_channel::never();
        let net = self.net_rx.clone();
        let frames = net.as_ref().map_or(&never_frames, |rx| rx.doorbell());
        let waiting = std::time::Instant::now();
        let command = crossbeam_channel::select! {
            recv(self.commands) -> cmd => Some(cmd),
            recv(input) -> bytes => {
                match bytes {
                    Ok(bytes) => self.input.extend(bytes),
                    // End of input: stop listening, keep running on timers.
                    Err(_) => self.input_rx = None,
                }
                None
            }
            // The next pass delivers it.
            recv(frames) -> _ => None,
            default(wait) => None,
        };
        if let Some(p) = self.profiler.as_mut() {
            p.halted(waiting.elapsed());
        }
        match command {
            Some(Ok(cmd)) => self.on_command(cmd, mode),
            Some(Err(_)) => Some(StopReason::Finished),
            None => None,
        }
    }
}
