//! Record and replay in the exit loop.
//!
//! Recording: guest time is frozen at each synchronous exit and logged with it (so every
//! device read during the exit sees one logged value), with the exit's reason, RIP,
//! port/address and value; the serial bytes moved into the UART and the interrupts
//! injected follow at the same ordinal. When an event waited too long and the vCPU was
//! kicked, a checkpoint delta is logged before the event is delivered there.
//!
//! Replaying: the same points, fed from the log instead of the host: time from the exit
//! records, input and interrupts from their entries, deltas applied instead of executing
//! the stretch they cover. Every exit is checked against its record; a mismatch is a
//! divergence, reported with both sides' values, and recovered from the next delta.

use std::collections::VecDeque;

use ft_log::{Delta, Digest, Entry, ExitKind, ExitRecord, LogStats};
use ftvm_devices::Clock;

use super::{SyncExit, Vcpu};
use crate::clock::VmClock;
use crate::record::{digest, Recorder};
use crate::replay::{ReplayStats, Replayer};
use crate::stop::StopReason;

/// What the vCPU does with its log: records into it, replays from it, or neither (opened
/// from a [`crate::machine::LogStream`]; the controller can switch it while paused).
pub enum LogMode {
    Off,
    Record(Box<Recorder>),
    Replay(Box<Replayer>),
}

/// What a run that logged or replayed reports at the end.
#[derive(Debug, Clone)]
pub struct LogReport {
    pub recording: bool,
    pub stats: LogStats,
    pub replay: Option<ReplayStats>,
    /// Digest of our final state.
    pub digest: Option<Digest>,
    /// Digest the recorder logged (replay only).
    pub recorded_digest: Option<Digest>,
    /// Guest time the run covered.
    pub guest_ns: u64,
    pub problem: Option<String>,
}

pub(super) fn log_failed(e: impl std::fmt::Display) -> StopReason {
    StopReason::Log(e.to_string())
}

/// Before handling an exit: freeze guest time at the value this exit is logged with.
pub(super) fn freeze_for_exit(log: &mut LogMode, clock: &VmClock, next_ordinal: u64) {
    match log {
        LogMode::Off => {}
        LogMode::Record(_) => {
            clock.freeze_now();
        }
        LogMode::Replay(r) => {
            if let Ok(Some(Entry::Exit(e))) = r.peek(0) {
                if e.ordinal == next_ordinal {
                    clock.freeze(e.time_ns);
                    clock.advance_to(e.time_ns);
                }
            }
        }
    }
}

impl SyncExit {
    fn record(&self, ordinal: u64, time_ns: u64, rip: u64) -> ExitRecord {
        let (kind, addr, size, value) = match *self {
            SyncExit::PioIn(p, n, v) => (ExitKind::PioIn, u64::from(p), n, v),
            SyncExit::PioOut(p, n, v) => (ExitKind::PioOut, u64::from(p), n, v),
            SyncExit::MmioRead(a, n, v) => (ExitKind::MmioRead, a, n, v),
            SyncExit::MmioWrite(a, n, v) => (ExitKind::MmioWrite, a, n, v),
            SyncExit::Hlt => (ExitKind::Hlt, 0, 0, 0),
            SyncExit::Repaired(_) => (ExitKind::Repaired, 0, 0, 0),
        };
        ExitRecord {
            ordinal,
            time_ns,
            kind,
            rip,
            addr,
            size: size.min(255) as u8,
            value,
        }
    }
}

fn describe(e: &ExitRecord) -> String {
    format!(
        "{:?} rip {:#x} addr {:#x} size {} value {:#x}",
        e.kind, e.rip, e.addr, e.size, e.value
    )
}

/// Zero every page of guest RAM that a full checkpoint does not list (and is not zero).
fn zero_pages_not_in(
    mem: &vm_memory::GuestMemoryMmap,
    pages: &[ft_log::Page],
) -> Result<(), String> {
    use vm_memory::Bytes;
    let listed: std::collections::HashSet<u64> = pages.iter().map(|p| p.gpa).collect();
    let zero = [0u8; crate::memory::PAGE_SIZE as usize];
    let mut cur = zero;
    for gpa in crate::memory::page_addresses(mem).filter(|gpa| !listed.contains(gpa)) {
        let at = vm_memory::GuestAddress(gpa);
        mem.read_slice(&mut cur, at)
            .map_err(|e| format!("page {gpa:#x}: {e}"))?;
        if cur != zero {
            mem.write_slice(&zero, at)
                .map_err(|e| format!("page {gpa:#x}: {e}"))?;
        }
    }
    Ok(())
}

/// Pages where guest memory differs from a full checkpoint (listed pages that differ, and
/// unlisted pages that are not zero).
fn differing_pages(mem: &vm_memory::GuestMemoryMmap, d: &Delta) -> usize {
    use vm_memory::Bytes;
    let listed: std::collections::HashMap<u64, &Vec<u8>> = d
        .pages
        .decoded()
        .unwrap_or_default()
        .iter()
        .map(|p| (p.gpa, &p.data))
        .collect();
    let mut cur = vec![0u8; crate::memory::PAGE_SIZE as usize];
    crate::memory::page_addresses(mem)
        .filter(|&gpa| {
            mem.read_slice(&mut cur, vm_memory::GuestAddress(gpa))
                .is_ok()
                && match listed.get(&gpa) {
                    Some(data) => cur != **data,
                    None => cur.iter().any(|&b| b != 0),
                }
        })
        .count()
}

impl Vcpu {
    pub(super) fn replaying(&self) -> bool {
        matches!(self.log, LogMode::Replay(_))
    }

    /// After a synchronous exit (ordinal already advanced): log it, or check it.
    pub(super) fn log_exit(&mut self, exit: &SyncExit) -> Option<StopReason> {
        if matches!(self.log, LogMode::Off) {
            return None;
        }
        let mine = exit.record(self.ordinal, self.clock.now_ns(), self.rip());
        match &mut self.log {
            LogMode::Off => None,
            LogMode::Record(rec) => rec.log(&Entry::Exit(mine)).err().map(log_failed),
            LogMode::Replay(r) => {
                match r.peek(0) {
                    Err(e) => return Some(log_failed(e)),
                    Ok(Some(Entry::Exit(logged))) if logged.ordinal == mine.ordinal => {
                        let logged = logged.clone();
                        let _ = r.pop();
                        if logged != mine {
                            tracing::warn!(
                                ordinal = mine.ordinal,
                                "replayed guest at the divergence: {}",
                                super::guest_context::describe(&self.fd, &self.memory)
                            );
                            let LogMode::Replay(r) = &mut self.log else {
                                return None;
                            };
                            r.diverged(
                                mine.ordinal,
                                "exit differs",
                                describe(&logged),
                                describe(&mine),
                            );
                        } else {
                            r.stats.exits_verified += 1;
                            r.set_verified(mine.ordinal);
                        }
                    }
                    Ok(other) => {
                        let recorded = format!("{other:?}");
                        r.diverged(mine.ordinal, "unexpected exit", recorded, describe(&mine));
                    }
                }
                None
            }
        }
    }

    /// Serial input for this point: from the host (logged when recording) or the log.
    pub(super) fn deliver_input(&mut self) {
        if let LogMode::Replay(r) = &mut self.log {
            let mut logged = VecDeque::new();
            while let Ok(Some(Entry::SerialInput { ordinal, .. })) = r.peek(0) {
                if *ordinal != self.ordinal {
                    break;
                }
                if let Ok(Some(Entry::SerialInput { bytes, .. })) = r.pop() {
                    logged.extend(bytes);
                }
            }
            let wanted = logged.len();
            let moved = self.platform.feed_serial(&mut logged);
            if moved.len() != wanted {
                r.diverged(
                    self.ordinal,
                    "serial input does not fit",
                    format!("{wanted} bytes"),
                    format!("{} bytes taken", moved.len()),
                );
            }
            return;
        }
        if let Some(rx) = &self.input_rx {
            while let Ok(bytes) = rx.try_recv() {
                self.input.extend(bytes);
            }
        }
        let moved = self.platform.feed_serial(&mut self.input);
        if let LogMode::Record(rec) = &mut self.log {
            if !moved.is_empty() {
                let entry = Entry::SerialInput {
                    ordinal: self.ordinal,
                    bytes: moved,
                };
                if let Err(e) = rec.log(&entry) {
                    self.log_failure = Some(log_failed(e));
                }
            }
        }
    }

    /// Replay: the vector the log injects at this point, if any (consumed).
    pub(super) fn logged_interrupt(&mut self) -> Option<u8> {
        let LogMode::Replay(r) = &mut self.log else {
            return None;
        };
        match r.peek(0) {
            Ok(Some(Entry::Interrupt { ordinal, vector })) if *ordinal == self.ordinal => {
                let v = *vector;
                let _ = r.pop();
                Some(v)
            }
            _ => None,
        }
    }

    pub(super) fn log_interrupt(&mut self, vector: u8) {
        if let LogMode::Record(rec) = &mut self.log {
            let entry = Entry::Interrupt {
                ordinal: self.ordinal,
                vector,
            };
            if let Err(e) = rec.log(&entry) {
                self.log_failure = Some(log_failed(e));
            }
        }
    }

    pub(super) fn interrupt_diverged(&mut self, recorded: String, replayed: String) {
        if let LogMode::Replay(r) = &mut self.log {
            r.diverged(self.ordinal, "interrupt differs", recorded, replayed);
        }
    }

    /// Recording, halted vCPU woke up: freeze and log the new time.
    pub(super) fn record_wake(&mut self) {
        if let LogMode::Record(rec) = &mut self.log {
            let t = self.clock.freeze_now();
            if t != self.last_logged_time {
                self.last_logged_time = t;
                let entry = Entry::TimeSample {
                    ordinal: self.ordinal,
                    time_ns: t,
                };
                if let Err(e) = rec.log(&entry) {
                    self.log_failure = Some(log_failed(e));
                }
            }
        }
    }

    /// A live backup's log has ended: it has replayed everything its primary sent and
    /// won the test-and-set. From here the guest runs on live time and live input, and
    /// events are delivered as on any live VM.
    pub(super) fn go_live(&mut self) {
        let replayed = match std::mem::replace(&mut self.log, LogMode::Off) {
            LogMode::Replay(r) => {
                if r.recovering {
                    // The primary died before the checkpoint that would have repaired
                    // the divergence. Nothing it output past the divergence was released
                    // (this backup never acknowledged it), but the guest's own state may
                    // be off: say so loudly rather than pretend.
                    tracing::error!(
                        ordinal = self.ordinal,
                        "going live from a diverged replay: the primary died before the resynchronising checkpoint arrived; the guest's state may be inconsistent"
                    );
                }
                r.stats.clone()
            }
            other => {
                self.log = other;
                return;
            }
        };
        self.clock.go_live();
        self.input_rx = self.live_input.take();
        if let Some((_, bound)) = self.kicker.as_mut() {
            *bound = crate::kicker::DEFAULT_EVENT_BOUND_NS;
        }
        self.stall_deadline = u64::MAX;
        self.pending_since = None;
        tracing::info!(
            ordinal = self.ordinal,
            verified = replayed.exits_verified,
            "replayed the whole log; the guest is live"
        );
        let _ = self.events.send(super::VcpuEvent::WentLive {
            ordinal: self.ordinal,
            replay: replayed,
        });
        self.deliver();
    }

    /// Recording, asked (by a backup that diverged) for a checkpoint delta: take one at
    /// this exit, where nothing else is pending.
    pub(super) fn record_requested_delta(&mut self) {
        let asked = self
            .delta_request
            .as_ref()
            .is_some_and(|r| r.swap(false, std::sync::atomic::Ordering::SeqCst));
        if asked && matches!(self.log, LogMode::Record(_)) {
            // Full: the backup also needs back the pages it wrote while diverged.
            tracing::info!(
                ordinal = self.ordinal,
                "the backup diverged: full checkpoint"
            );
            self.record_delta(true);
        }
    }

    /// Recording, kicked vCPU about to get an event: log a checkpoint delta first.
    pub(super) fn record_kick_delta(&mut self) {
        self.record_delta(false);
    }

    fn record_delta(&mut self, full: bool) {
        if !matches!(self.log, LogMode::Record(_)) {
            return;
        }
        if let Err(e) = self.settle() {
            self.log_failure = Some(log_failed(e));
            return;
        }
        let LogMode::Record(rec) = &mut self.log else {
            return;
        };
        let t = self.clock.freeze_now();
        match rec.take_delta(
            &self.fd,
            &self.memory,
            &self.platform,
            self.ordinal,
            t,
            self.halted,
            full,
        ) {
            Ok(d) => {
                if let Err(e) = rec.log(&Entry::Delta(Box::new(d))) {
                    self.log_failure = Some(log_failed(e));
                }
            }
            Err(e) => self.log_failure = Some(log_failed(e)),
        }
    }

    /// Load a delta into the machine: vCPU, devices, pages.
    fn apply_delta(&mut self, d: Delta) -> Result<(), String> {
        // Our own last exit's I/O would otherwise complete on top of the loaded state.
        self.settle().map_err(|e| e.to_string())?;
        let cfg = bincode::config::standard();
        let (vcpu, _): (crate::state::VcpuState, usize) =
            bincode::serde::decode_from_slice(&d.vcpu, cfg)
                .map_err(|e| format!("delta vCPU: {e}"))?;
        vcpu.validate().map_err(|e| format!("delta vCPU: {e}"))?;
        tracing::trace!(
            ordinal = d.ordinal,
            rip = format_args!("{:#x}", vcpu.regs.rip),
            rflags = format_args!("{:#x}", vcpu.regs.rflags),
            cpl = vcpu.sregs.cs.dpl,
            exception = ?(vcpu.events.exception.injected, vcpu.events.exception.pending, vcpu.events.exception.nr),
            shadow = vcpu.events.interrupt.shadow,
            "loading a checkpoint"
        );
        let (devices, _): (crate::platform::PlatformState, usize) =
            bincode::serde::decode_from_slice(&d.devices, cfg)
                .map_err(|e| format!("delta devices: {e}"))?;
        let pages = d.pages.decoded().ok_or("delta pages not decoded")?;
        if d.full {
            zero_pages_not_in(&self.memory, pages)?;
        }
        for page in pages {
            use vm_memory::Bytes;
            self.memory
                .write_slice(&page.data, vm_memory::GuestAddress(page.gpa))
                .map_err(|e| format!("delta page {:#x}: {e}", page.gpa))?;
        }
        if !d.pages.is_empty() {
            // KVM did not see those writes (see compat::shadow_mmu).
            self.memory_slots
                .reload(&self.memory)
                .map_err(|e| e.to_string())?;
            self.metrics.compat.slot_reloads += 1;
        }
        self.clock.freeze(d.time_ns);
        self.clock.advance_to(d.time_ns);
        self.platform
            .load_state(devices)
            .map_err(|e| e.to_string())?;
        vcpu.restore(&self.fd).map_err(|e| e.to_string())?;
        crate::pagecheck::at_delta(&self.memory, d.ordinal);
        self.ordinal = d.ordinal;
        self.halted = vcpu.halted;
        self.if_flag = vcpu.regs.rflags & 0x200 != 0;
        if let LogMode::Replay(r) = &mut self.log {
            r.stats.deltas_applied += 1;
            r.stats.delta_pages_applied += d.pages.len() as u64;
            // The machine is now exactly the recorder's at this point.
            r.set_verified(d.ordinal);
            r.delta_applied();
        }
        self.publish_ordinal();
        Ok(())
    }

    /// Replay, before running the vCPU: a delta due at this ordinal replaces the stretch
    /// the recorder ran without exits. Returns Some when it handled this step.
    pub(super) fn replay_before_run(&mut self) -> Option<Option<StopReason>> {
        let LogMode::Replay(r) = &mut self.log else {
            return None;
        };
        let live = r.is_live();
        let delta_here =
            matches!(r.peek(0), Ok(Some(Entry::Delta(d))) if d.ordinal == self.ordinal);
        // Only a delta needs to look further ahead (a live log may not have more yet).
        let is_final = delta_here && matches!(r.peek(1), Ok(Some(Entry::Shutdown { .. })));
        match r.peek(0) {
            Err(e) => Some(Some(log_failed(e))),
            Ok(Some(Entry::Delta(d))) if d.ordinal == self.ordinal && !is_final => {
                let Ok(Some(Entry::Delta(d))) = r.pop() else {
                    return Some(Some(log_failed("delta vanished")));
                };
                if let Err(e) = self.apply_delta(*d) {
                    return Some(Some(log_failed(e)));
                }
                self.deliver();
                Some(None)
            }
            // The recording ended here (stopped from outside, not by the guest).
            Ok(Some(Entry::Delta(d))) if d.ordinal == self.ordinal => {
                Some(Some(StopReason::Finished))
            }
            Ok(Some(Entry::Shutdown { ordinal, .. })) if *ordinal == self.ordinal => {
                Some(Some(StopReason::Finished))
            }
            // A live log that ends here: the guest goes live (see Vcpu::go_live).
            Ok(None) if live => Some(None),
            Ok(None) => Some(Some(log_failed("the log ends without a shutdown record"))),
            Ok(Some(_)) => None,
        }
    }

    /// Replay: the guest ran for the stall bound without the exit the log has next.
    pub(super) fn replay_stalled(&mut self) {
        let bound = self.kicker.as_ref().map_or(0, |(_, b)| *b);
        let ordinal = self.ordinal;
        if let LogMode::Replay(r) = &mut self.log {
            let next = match r.peek(0) {
                Ok(Some(e)) => Entry::kind_name(e.kind()).to_string(),
                Ok(None) => "end of log".into(),
                Err(e) => e.to_string(),
            };
            r.diverged(
                ordinal,
                "the replayed guest stopped making exits",
                format!("next: {next}"),
                format!("no exit for {:.1} s", bound as f64 / 1e9),
            );
        }
    }

    /// Replay, halted vCPU: the log says how time moved and what woke it.
    pub(super) fn replay_halted(&mut self) -> Option<StopReason> {
        let LogMode::Replay(r) = &mut self.log else {
            return None;
        };
        let live = r.is_live();
        match r.peek(0) {
            Err(e) => Some(log_failed(e)),
            Ok(Some(Entry::TimeSample { ordinal, time_ns })) if *ordinal == self.ordinal => {
                let t = *time_ns;
                let _ = r.pop();
                self.clock.freeze(t);
                self.clock.advance_to(t);
                self.deliver();
                None
            }
            Ok(Some(Entry::SerialInput { ordinal, .. }))
            | Ok(Some(Entry::Packet { ordinal, .. }))
            | Ok(Some(Entry::Interrupt { ordinal, .. }))
                if *ordinal == self.ordinal =>
            {
                let before = r.popped();
                self.deliver();
                // Nothing changes in a halted guest until the log says so: if it could
                // not take this entry now it never will, and asking again would spin.
                if let LogMode::Replay(r) = &mut self.log {
                    if r.popped() == before && !r.recovering {
                        let recorded = format!("{:?}", r.peek(0).ok().flatten());
                        r.diverged(
                            self.ordinal,
                            "the halted guest cannot take its logged input",
                            recorded,
                            "nothing taken".into(),
                        );
                    }
                }
                None
            }
            Ok(Some(Entry::Delta(_))) | Ok(Some(Entry::Shutdown { .. })) => {
                self.replay_before_run().unwrap_or(None)
            }
            // A live log that ends here: the guest goes live.
            Ok(None) if live => None,
            Ok(other) => {
                let recorded = format!("{other:?}");
                r.diverged(self.ordinal, "halted here", recorded, "halted".into());
                None
            }
        }
    }

    /// Replay after a divergence: skip the log to the next delta and load it.
    pub(super) fn replay_recover(&mut self) -> Option<StopReason> {
        loop {
            let LogMode::Replay(r) = &mut self.log else {
                return None;
            };
            let live = r.is_live();
            match r.peek(0) {
                Err(e) => return Some(log_failed(e)),
                // The primary died before the checkpoint came: the guest goes live.
                Ok(None) if live => return None,
                Ok(None) => return Some(log_failed("the log ends without a shutdown record")),
                // A live backup recovers only from a full checkpoint (which its primary
                // takes when asked): a dirty-page delta lists the pages the primary wrote,
                // not those the diverged backup wrote on its own.
                Ok(Some(Entry::Delta(d))) if live && !d.full => {
                    let _ = r.pop();
                }
                Ok(Some(Entry::Delta(_))) => {
                    let Ok(Some(Entry::Delta(d))) = r.pop() else {
                        return Some(log_failed("delta vanished"));
                    };
                    r.set_recovering(false);
                    tracing::info!(
                        ordinal = d.ordinal,
                        full = d.full,
                        pages = d.pages.len(),
                        "recovered from a checkpoint"
                    );
                    let is_final = matches!(r.peek(0), Ok(Some(Entry::Shutdown { .. })));
                    if let Err(e) = self.apply_delta(*d) {
                        return Some(log_failed(e));
                    }
                    if is_final {
                        // Recovered to the recorder's final state: the replay is complete.
                        return Some(StopReason::Finished);
                    }
                    self.deliver();
                    return None;
                }
                Ok(Some(Entry::Shutdown { .. })) => {
                    return Some(StopReason::Log(
                        "diverged and the log has no later checkpoint delta to recover from".into(),
                    ))
                }
                Ok(Some(e)) => {
                    if matches!(e, Entry::Exit(_)) {
                        r.stats.exits_skipped += 1;
                    }
                    let _ = r.pop();
                }
            }
        }
    }

    /// At the end of a run: the recorder logs a final delta and the digest; the replayer
    /// compares digests (recovering through the final delta if it had diverged).
    pub(super) fn finish_log(&mut self, stop: &StopReason) -> Option<LogReport> {
        let guest_ns = self.clock.live_ns().saturating_sub(self.start_ns);
        if !matches!(self.log, LogMode::Off) {
            // Both sides digest (and the recorder checkpoints) the settled state.
            if let Err(e) = self.settle() {
                tracing::warn!("cannot settle the vCPU for the final state: {e}");
            }
        }
        match std::mem::replace(&mut self.log, LogMode::Off) {
            LogMode::Off => None,
            LogMode::Record(mut rec) => {
                let mut problem = None;
                let ours = digest(&self.fd, &self.memory, &self.platform);
                let t = self.clock.now_ns();
                match (
                    rec.take_delta(
                        &self.fd,
                        &self.memory,
                        &self.platform,
                        self.ordinal,
                        t,
                        self.halted,
                        true,
                    ),
                    &ours,
                ) {
                    (Ok(d), Ok(dg)) => {
                        let shutdown = Entry::Shutdown {
                            ordinal: self.ordinal,
                            reason: stop.to_string(),
                            digest: *dg,
                        };
                        let r = rec
                            .log(&Entry::Delta(Box::new(d)))
                            .and_then(|_| rec.log(&shutdown))
                            .and_then(|_| rec.flush());
                        if let Err(e) = r {
                            problem = Some(e.to_string());
                        }
                    }
                    (Err(e), _) => problem = Some(e.to_string()),
                    (_, Err(e)) => problem = Some(e.to_string()),
                }
                Some(LogReport {
                    recording: true,
                    stats: rec.stats.clone(),
                    replay: None,
                    digest: ours.ok(),
                    recorded_digest: None,
                    guest_ns,
                    problem,
                })
            }
            LogMode::Replay(mut r) => {
                let mut problem = None;
                let mut recorded = None;
                let mut ours = None;
                // What is left: the final delta (if not consumed) and the shutdown record.
                loop {
                    match r.pop() {
                        Ok(Some(Entry::Delta(d))) if !r.recovering => {
                            // In step so far: compare our state with the recorder's final
                            // one before the final delta is loaded.
                            let recorded_now = match r.peek(0) {
                                Ok(Some(Entry::Shutdown { digest, .. })) => Some(*digest),
                                _ => None,
                            };
                            let mine = digest(&self.fd, &self.memory, &self.platform).ok();
                            if mine.is_some() && recorded_now.is_some() && mine != recorded_now {
                                // State that never showed at an exit diverged (on hosts that
                                // cannot trap RDTSC: the kernel's entropy pool). Report it,
                                // then recover through the final delta like any divergence.
                                let differing = differing_pages(&self.memory, &d);
                                let total = d.pages.len();
                                r.diverged(
                                    self.ordinal,
                                    "final state differs without having shown at an exit",
                                    format!("{}", recorded_now.unwrap_or(mine.unwrap_or(Digest { memory_crc32: 0, vcpu_crc32: 0, devices_crc32: 0 }))),
                                    format!(
                                        "{} ({differing} pages differ from the recorder's final {total} non-zero pages)",
                                        mine.map(|m| m.to_string()).unwrap_or_default()
                                    ),
                                );
                                self.log = LogMode::Replay(r);
                                let applied = self.apply_delta(*d);
                                let LogMode::Replay(back) =
                                    std::mem::replace(&mut self.log, LogMode::Off)
                                else {
                                    unreachable!("just put it back");
                                };
                                r = back;
                                r.set_recovering(false);
                                if let Err(e) = applied {
                                    problem = Some(e);
                                }
                            } else {
                                ours = mine;
                            }
                        }
                        Ok(Some(Entry::Delta(d))) => {
                            if r.recovering {
                                self.log = LogMode::Replay(r);
                                let applied = self.apply_delta(*d);
                                let LogMode::Replay(back) =
                                    std::mem::replace(&mut self.log, LogMode::Off)
                                else {
                                    unreachable!("just put it back");
                                };
                                r = back;
                                if let Err(e) = applied {
                                    problem = Some(e);
                                }
                                r.set_recovering(false);
                            }
                        }
                        Ok(Some(Entry::Shutdown {
                            digest: d, ordinal, ..
                        })) => {
                            recorded = Some(d);
                            if ordinal != self.ordinal && problem.is_none() {
                                problem = Some(format!(
                                    "the recording ended at exit {ordinal}, the replay at exit {}",
                                    self.ordinal
                                ));
                            }
                            break;
                        }
                        Ok(Some(e)) => {
                            if matches!(e, Entry::Exit(_)) {
                                r.stats.exits_skipped += 1;
                            }
                        }
                        Ok(None) => {
                            problem = Some("the log ends without a shutdown record".into());
                            break;
                        }
                        Err(e) => {
                            problem = Some(e.to_string());
                            break;
                        }
                    }
                }
                if ours.is_none() {
                    ours = digest(&self.fd, &self.memory, &self.platform).ok();
                }
                Some(LogReport {
                    recording: false,
                    stats: r.log_stats.clone(),
                    replay: Some(r.stats.clone()),
                    digest: ours,
                    recorded_digest: recorded,
                    guest_ns,
                    problem,
                })
            }
        }
    }
}
