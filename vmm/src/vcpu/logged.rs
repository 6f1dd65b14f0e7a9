//! Record and replay in the exit loop: the log mode, and what the recorder logs.
//!
//! Recording: guest time is frozen at each synchronous exit and logged with it (so every
//! device read during the exit sees one logged value), with the exit's reason, RIP,
//! port/address and value; the serial bytes moved into the UART and the interrupts
//! injected follow at the same ordinal. When an event waited too long and the vCPU was
//! kicked, the point is named (`points.rs`) or a checkpoint delta is logged before the
//! event is delivered there.
//!
//! Replaying: the same points, fed from the log instead of the host: time from the exit
//! records, input and interrupts from their entries, deltas applied instead of executing
//! the stretch they cover. What to do at each point is decided by `replay_core` (no I/O)
//! and carried out in `replaying.rs`; every exit is checked against its record, and a
//! mismatch is a divergence, reported with both sides' values and recovered from the
//! next delta.

use std::collections::VecDeque;

use ft_log::{Digest, Entry, ExitKind, ExitRecord, LogStats};
use ftvm_devices::Clock;

use super::record_core::{self, Point, Record};
use super::replay_core::{self, ExitCheck};
use super::{SyncExit, Vcpu};
use crate::clock::VmClock;
use crate::record::Recorder;
use crate::replay::{ReplayStats, Replayer};
use crate::stop::StopReason;

/// Held console output is logged in entries of at most this many bytes.
const HELD_OUTPUT_PIECE: usize = 1 << 20;

/// What the vCPU does with its log: records into it, replays from it, or neither (opened
/// from a [`crate::machine::LogStream`]; the controller can switch it while paused).
pub enum LogMode {
    /// No log.
    Off,
    /// Record into this recorder's log.
    Record(Box<Recorder>),
    /// Replay from this replayer's log.
    Replay(Box<Replayer>),
}

/// What a run that logged or replayed reports at the end.
#[derive(Debug, Clone)]
pub struct LogReport {
    /// Whether the run recorded (rather than replayed).
    pub recording: bool,
    /// Entries and bytes written or read, by kind.
    pub stats: LogStats,
    /// What the replay verified and applied (replay only).
    pub replay: Option<ReplayStats>,
    /// Digest of our final state.
    pub digest: Option<Digest>,
    /// Digest the recorder logged (replay only).
    pub recorded_digest: Option<Digest>,
    /// Guest time the run covered.
    pub guest_ns: u64,
    /// What went wrong finishing the log (writing its end, reading the rest of it, or a
    /// mismatch at its end), if anything.
    pub problem: Option<String>,
}

pub(super) fn log_failed(e: impl std::fmt::Display) -> StopReason {
    StopReason::Log(e.to_string())
}

/// Before a full checkpoint at `ordinal` (the one a diverged backup asked for, or the
/// final one): the output `sink` holds for the backup, which a diverged backup's replay
/// never produced (see `Entry::HeldOutput`).
pub(super) fn log_held_output(
    sink: Option<&std::sync::Arc<crate::ft::console::ConsoleSink>>,
    ordinal: u64,
    rec: &mut Recorder,
) -> Result<(), crate::record::RecordError> {
    let Some(sink) = sink else {
        return Ok(());
    };
    for (position, bytes) in sink.held_pieces(HELD_OUTPUT_PIECE) {
        rec.log(&Entry::HeldOutput {
            ordinal,
            position,
            bytes,
        })?;
    }
    Ok(())
}

/// Before handling an exit: freeze guest time at the value this exit is logged with.
pub(super) fn freeze_for_exit(log: &mut LogMode, clock: &VmClock, next_ordinal: u64) {
    match log {
        LogMode::Off => {}
        LogMode::Record(_) => {
            clock.freeze_now();
        }
        LogMode::Replay(r) => {
            if let Some(t) = replay_core::exit_time(r.as_mut(), next_ordinal) {
                clock.freeze(t);
                clock.advance_to(t);
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

impl Vcpu {
    pub(super) fn replaying(&self) -> bool {
        matches!(self.log, LogMode::Replay(_))
    }

    /// When recording, carry out the recorder core's decision for `point` (built only
    /// then): write its entry or take its delta. A failure stops the VM at the next step.
    pub(super) fn record(&mut self, point: impl FnOnce(&Self) -> Point) {
        if !matches!(self.log, LogMode::Record(_)) {
            return;
        }
        match record_core::decide(point(self)) {
            Record::Nothing => {}
            Record::Log(entry) => {
                if let LogMode::Record(rec) = &mut self.log {
                    if let Err(e) = rec.log(&entry) {
                        self.log_failure = Some(log_failed(e));
                    }
                }
            }
            Record::Delta { full } => self.record_delta(full),
        }
    }

    /// After a synchronous exit (ordinal already advanced): log it, or check it.
    pub(super) fn log_exit(&mut self, exit: &SyncExit) -> Option<StopReason> {
        if matches!(self.log, LogMode::Off) {
            return None;
        }
        let mine = exit.record(self.ordinal, self.clock.now_ns(), self.rip());
        match &mut self.log {
            LogMode::Off => None,
            LogMode::Record(_) => {
                self.record(|_| Point::Exit(mine));
                self.log_failure.take()
            }
            LogMode::Replay(r) => {
                match replay_core::check_exit(r.as_mut(), &mine) {
                    Err(e) => return Some(log_failed(e)),
                    Ok(ExitCheck::Verified) => {
                        r.stats.exits_verified += 1;
                        r.set_verified(mine.ordinal);
                    }
                    Ok(ExitCheck::Differs(d)) => {
                        tracing::warn!(
                            ordinal = mine.ordinal,
                            "replayed guest at the divergence: {}",
                            super::guest_context::describe(&self.fd, &self.memory)
                        );
                        self.diverged(d);
                    }
                    Ok(ExitCheck::Unexpected(d)) => self.diverged(d),
                }
                None
            }
        }
    }

    /// Serial input for this point: from the host (logged when recording) or the log.
    pub(super) fn deliver_input(&mut self) {
        if let LogMode::Replay(r) = &mut self.log {
            let mut logged: VecDeque<u8> =
                replay_core::serial_input(r.as_mut(), self.ordinal).into();
            let wanted = logged.len();
            let moved = self.platform.feed_serial(&mut logged);
            if let Some(d) = replay_core::serial_fit(self.ordinal, wanted, moved.len()) {
                self.diverged(d);
            }
            return;
        }
        if let Some(rx) = &self.input_rx {
            while let Ok(bytes) = rx.try_recv() {
                self.input.extend(bytes);
            }
        }
        let bytes = self.platform.feed_serial(&mut self.input);
        self.record(|v| Point::SerialMoved {
            ordinal: v.ordinal,
            bytes,
        });
    }

    /// Interrupt `vector` was injected at this point.
    pub(super) fn log_interrupt(&mut self, vector: u8) {
        self.record(|v| Point::Injected {
            ordinal: v.ordinal,
            vector,
        });
    }

    /// Recording, halted vCPU woke up: freeze and log the new time.
    pub(super) fn record_wake(&mut self) {
        if !matches!(self.log, LogMode::Record(_)) {
            return;
        }
        let t = self.clock.freeze_now();
        self.record(|v| Point::Woke {
            ordinal: v.ordinal,
            now_ns: t,
            last_logged_ns: v.last_logged_time,
        });
        self.last_logged_time = t;
    }

    /// Recording, asked (by a backup that diverged) for a checkpoint delta: take one at
    /// this exit, where nothing else is pending.
    pub(super) fn record_requested_delta(&mut self) {
        let asked = self
            .delta_request
            .as_ref()
            .is_some_and(|r| r.swap(false, std::sync::atomic::Ordering::SeqCst));
        if asked && matches!(self.log, LogMode::Record(_)) {
            self.record(|_| Point::CheckpointAsked);
        }
    }

    /// Take a checkpoint delta at this point and log it (the recorder core decided so).
    fn record_delta(&mut self, full: bool) {
        if let Err(e) = self.settle() {
            self.log_failure = Some(log_failed(e));
            return;
        }
        let LogMode::Record(rec) = &mut self.log else {
            return;
        };
        if full {
            if let Err(e) = log_held_output(self.held_output.as_ref(), self.ordinal, rec) {
                self.log_failure = Some(log_failed(e));
                return;
            }
        }
        let t = self.clock.freeze_now();
        self.placement.last_delta_ns = t;
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
                if full {
                    // What a resync costs: only the pages the primary changed since the
                    // last checkpoint both sides hold travel; the backup undoes its own
                    // writes since then from its copy of that checkpoint.
                    tracing::info!(
                        ordinal = self.ordinal,
                        pages = d.pages.len(),
                        guest_pages = crate::memory::page_addresses(&self.memory).count(),
                        payload_bytes = d.pages.payload_bytes(),
                        "the backup diverged: full checkpoint"
                    );
                }
                if let Err(e) = rec.log(&Entry::Delta(Box::new(d))) {
                    self.log_failure = Some(log_failed(e));
                }
            }
            Err(e) => self.log_failure = Some(log_failed(e)),
        }
    }
}
