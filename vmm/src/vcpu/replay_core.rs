//! The replay core: what a replaying vCPU does at each of its points, decided from the
//! log's next entries and what the vCPU did there. It does no I/O: entries come through
//! [`LogAhead`] (the [`Replayer`] reading a file or a primary's pipe, or a list in the
//! tests), and every answer is an action that `replaying.rs` carries out with ioctls and
//! memory writes: verify and go on, inject vector V, feed these serial bytes, offer this
//! frame, apply this delta, report a divergence with both sides' values, stop at the end
//! of the recording, or wait for the live log's end (where the backup goes live).

use ft_log::{Delta, Entry, ExitRecord, PacketOutcome};

use crate::replay::{ReplayError, Replayer};

/// The log ahead of the replaying vCPU.
pub(crate) trait LogAhead {
    /// The `i`-th entry ahead, if the log has one (yet).
    fn peek(&mut self, i: usize) -> Result<Option<&Entry>, ReplayError>;
    /// Take the next entry off the log.
    fn pop(&mut self) -> Result<Option<Entry>, ReplayError>;
    /// Entries taken off the log so far (to tell whether a step made progress).
    fn popped(&self) -> u64;
    /// A primary's live log: its end is where the backup goes live, not an error.
    fn is_live(&self) -> bool;
}

impl LogAhead for Replayer {
    fn peek(&mut self, i: usize) -> Result<Option<&Entry>, ReplayError> {
        Replayer::peek(self, i)
    }
    fn pop(&mut self) -> Result<Option<Entry>, ReplayError> {
        Replayer::pop(self)
    }
    fn popped(&self) -> u64 {
        Replayer::popped(self)
    }
    fn is_live(&self) -> bool {
        Replayer::is_live(self)
    }
}

/// Why a replay cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayCoreError {
    #[error(transparent)]
    Read(#[from] ReplayError),
    #[error("the log ends without a shutdown record")]
    NoShutdown,
    /// A delta peeked at was not there when taken (the log reader lost it).
    #[error("delta vanished")]
    DeltaVanished,
    #[error("diverged and the log has no later checkpoint delta to recover from")]
    NoCheckpoint,
    #[error("the recording ended at exit {recorded}, the replay at exit {replayed}")]
    EndsElsewhere { recorded: u64, replayed: u64 },
}

/// The replayed guest did something else than the recorded one: where, what, and both
/// sides' values in words (the replayer reports it and recovers from the next delta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub ordinal: u64,
    pub what: &'static str,
    pub recorded: String,
    pub replayed: String,
}

impl Divergence {
    fn new(ordinal: u64, what: &'static str, recorded: String, replayed: String) -> Self {
        Self {
            ordinal,
            what,
            recorded,
            replayed,
        }
    }
}

/// A synchronous exit against its record.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitCheck {
    /// The same exit: count it verified and go on.
    Verified,
    /// The record at this ordinal differs from the exit the guest made.
    Differs(Divergence),
    /// The log has something else than an exit here.
    Unexpected(Divergence),
}

/// What to do before running the vCPU.
#[derive(Debug, PartialEq)]
pub enum BeforeRun {
    /// Nothing is due here: run the vCPU to its next exit.
    Run,
    /// The recorder ran the next stretch without exits: load its delta instead (taken
    /// off the log).
    ApplyDelta(Box<Delta>),
    /// The recorder delivered events at this point before the next exit: run with a
    /// breakpoint on its RIP until the pass with its registers (the entry stays on the
    /// log until then, see [`points`]).
    SeekPoint(Box<ft_log::EventPoint>),
    /// The recording ended here.
    Finished,
    /// A live log with nothing more (yet): do not run; the loop checks whether the log
    /// has ended and the guest goes live.
    AwaitLog,
}

/// What a halted replayed vCPU does.
#[derive(Debug, PartialEq)]
pub enum Halted {
    /// Time moved to here while halted: freeze the clock there and deliver.
    SetTime(u64),
    /// Input or an interrupt is logged here: deliver it (then see [`untaken_input`]).
    DeliverLogged,
    /// A delta or the end of the recording: as before a run.
    BeforeRun,
    /// A live log with nothing more (yet).
    AwaitLog,
    Diverged(Divergence),
}

/// An exit record in words, for divergence reports.
pub fn describe(e: &ExitRecord) -> String {
    format!(
        "{:?} rip {:#x} addr {:#x} size {} value {:#x}",
        e.kind, e.rip, e.addr, e.size, e.value
    )
}

/// The guest time the exit at `next_ordinal` is logged with, if the log has it next (the
/// clock is frozen there so that every device read during the exit sees it).
pub(crate) fn exit_time(log: &mut impl LogAhead, next_ordinal: u64) -> Option<u64> {
    match log.peek(0) {
        Ok(Some(Entry::Exit(e))) if e.ordinal == next_ordinal => Some(e.time_ns),
        _ => None,
    }
}

/// After a synchronous exit: check `mine` against the record at its ordinal (taken off
/// the log when it is there).
pub(crate) fn check_exit(
    log: &mut impl LogAhead,
    mine: &ExitRecord,
) -> Result<ExitCheck, ReplayCoreError> {
    match log.peek(0)? {
        Some(Entry::Exit(logged)) if logged.ordinal == mine.ordinal => {
            let logged = logged.clone();
            let _ = log.pop();
            if logged == *mine {
                Ok(ExitCheck::Verified)
            } else {
                Ok(ExitCheck::Differs(Divergence::new(
                    mine.ordinal,
                    "exit differs",
                    describe(&logged),
                    describe(mine),
                )))
            }
        }
        Some(Entry::Point(p)) => Ok(ExitCheck::Unexpected(points::passed(
            p,
            mine.ordinal,
            describe(mine),
        ))),
        other => Ok(ExitCheck::Unexpected(Divergence::new(
            mine.ordinal,
            "unexpected exit",
            format!("{other:?}"),
            describe(mine),
        ))),
    }
}

/// The serial bytes logged at `ordinal` (taken off the log), to feed the UART with.
pub(crate) fn serial_input(log: &mut impl LogAhead, ordinal: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Ok(Some(Entry::SerialInput { ordinal: at, .. })) = log.peek(0) {
        if *at != ordinal {
            break;
        }
        if let Ok(Some(Entry::SerialInput { bytes: more, .. })) = log.pop() {
            bytes.extend(more);
        }
    }
    bytes
}

/// The UART took `taken` of the `wanted` logged bytes: a divergence unless it took all.
pub fn serial_fit(ordinal: u64, wanted: usize, taken: usize) -> Option<Divergence> {
    (taken != wanted).then(|| {
        Divergence::new(
            ordinal,
            "serial input does not fit",
            format!("{wanted} bytes"),
            format!("{taken} bytes taken"),
        )
    })
}

/// The vector the log injects at `ordinal`, if any (taken off the log).
pub(crate) fn logged_interrupt(log: &mut impl LogAhead, ordinal: u64) -> Option<u8> {
    match log.peek(0) {
        Ok(Some(Entry::Interrupt {
            ordinal: at,
            vector,
        })) if *at == ordinal => {
            let v = *vector;
            let _ = log.pop();
            Some(v)
        }
        _ => None,
    }
}

/// The logged interrupt `want` at `ordinal`: the vector to inject, or a divergence when
/// the guest cannot take it (IF clear) or the PIC has another one. `acknowledge` asks
/// the PIC, which it changes: it is called only when the guest can take an interrupt.
pub fn check_interrupt(
    ordinal: u64,
    want: u8,
    if_flag: bool,
    acknowledge: impl FnOnce() -> Option<u8>,
) -> Result<u8, Divergence> {
    let recorded = format!("vector {want:#x}");
    if !if_flag {
        return Err(Divergence::new(
            ordinal,
            "interrupt differs",
            recorded,
            "guest cannot take it".into(),
        ));
    }
    match acknowledge() {
        Some(v) if v == want => Ok(v),
        other => Err(Divergence::new(
            ordinal,
            "interrupt differs",
            recorded,
            format!("{other:x?}"),
        )),
    }
}

/// The next frame the log offers at `ordinal` and its recorded outcome (taken off the
/// log).
pub(crate) fn logged_frame(
    log: &mut impl LogAhead,
    ordinal: u64,
) -> Option<(Vec<u8>, PacketOutcome)> {
    match log.peek(0) {
        Ok(Some(Entry::Packet { ordinal: at, .. })) if *at == ordinal => match log.pop() {
            Ok(Some(Entry::Packet { data, outcome, .. })) => Some((data, outcome)),
            _ => None,
        },
        _ => None,
    }
}

/// A replayed frame offer against its record (`replayed` None: no receive buffer).
pub fn check_frame(
    ordinal: u64,
    recorded: PacketOutcome,
    replayed: Option<PacketOutcome>,
) -> Option<Divergence> {
    let (recorded, replayed) = super::net_input::replay_mismatch(recorded, replayed)?;
    Some(Divergence::new(
        ordinal,
        "received frame lands differently",
        recorded,
        replayed,
    ))
}

/// Before running the vCPU at `ordinal`: a delta due here replaces the stretch the
/// recorder ran without exits; a shutdown record (or the final delta before it) ends the
/// replay here.
pub(crate) fn before_run(
    log: &mut impl LogAhead,
    ordinal: u64,
) -> Result<BeforeRun, ReplayCoreError> {
    let live = log.is_live();
    let delta_here = matches!(log.peek(0), Ok(Some(Entry::Delta(d))) if d.ordinal == ordinal);
    // Only a delta needs to look further ahead (a live log may not have more yet).
    let is_final = delta_here && matches!(log.peek(1), Ok(Some(Entry::Shutdown { .. })));
    match log.peek(0)? {
        Some(Entry::Delta(d)) if d.ordinal == ordinal && !is_final => match log.pop() {
            Ok(Some(Entry::Delta(d))) => Ok(BeforeRun::ApplyDelta(d)),
            _ => Err(ReplayCoreError::DeltaVanished),
        },
        // The recording ended here (stopped from outside, not by the guest).
        Some(Entry::Delta(d)) if d.ordinal == ordinal => Ok(BeforeRun::Finished),
        Some(Entry::Shutdown { ordinal: at, .. }) if *at == ordinal => Ok(BeforeRun::Finished),
        Some(Entry::Point(p)) if p.ordinal == ordinal => Ok(BeforeRun::SeekPoint(p.clone())),
        // A live log that ends here: the guest goes live (see Vcpu::go_live).
        None if live => Ok(BeforeRun::AwaitLog),
        None => Err(ReplayCoreError::NoShutdown),
        Some(_) => Ok(BeforeRun::Run),
    }
}

/// A halted vCPU at `ordinal`: the log says how time moved and what woke it.
pub(crate) fn halted(log: &mut impl LogAhead, ordinal: u64) -> Result<Halted, ReplayCoreError> {
    let live = log.is_live();
    match log.peek(0)? {
        Some(Entry::TimeSample {
            ordinal: at,
            time_ns,
        }) if *at == ordinal => {
            let t = *time_ns;
            let _ = log.pop();
            Ok(Halted::SetTime(t))
        }
        Some(Entry::SerialInput { ordinal: at, .. })
        | Some(Entry::Packet { ordinal: at, .. })
        | Some(Entry::Interrupt { ordinal: at, .. })
            if *at == ordinal =>
        {
            Ok(Halted::DeliverLogged)
        }
        Some(Entry::Delta(_)) | Some(Entry::Shutdown { .. }) => Ok(Halted::BeforeRun),
        // A live log that ends here: the guest goes live.
        None if live => Ok(Halted::AwaitLog),
        other => Ok(Halted::Diverged(Divergence::new(
            ordinal,
            "halted here",
            format!("{other:?}"),
            "halted".into(),
        ))),
    }
}

/// After [`Halted::DeliverLogged`]: nothing changes in a halted guest until the log says
/// so, so if it took no entry (the log had taken `before`) it never will, and asking
/// again would spin. Not while recovering, when the log is being skipped anyway.
pub(crate) fn untaken_input(
    log: &mut impl LogAhead,
    ordinal: u64,
    before: u64,
    recovering: bool,
) -> Option<Divergence> {
    if log.popped() != before || recovering {
        return None;
    }
    let recorded = format!("{:?}", log.peek(0).ok().flatten());
    Some(Divergence::new(
        ordinal,
        "the halted guest cannot take its logged input",
        recorded,
        "nothing taken".into(),
    ))
}

/// How long the replayed guest may run from guest time `now_ns` before the exit or point
/// the log has next counts as never coming: `base_ns`, or three times as long as the
/// recorder took to get there (guest time runs with host time while a recorder runs, and
/// an early boot's stretches without exits take longer than `base_ns` here).
pub(crate) fn stall_limit(log: &mut impl LogAhead, now_ns: u64, base_ns: u64) -> u64 {
    let next = match log.peek(0) {
        Ok(Some(Entry::Exit(e))) => e.time_ns,
        Ok(Some(Entry::Point(p))) => p.time_ns,
        _ => return base_ns,
    };
    base_ns.max(next.saturating_sub(now_ns).saturating_mul(3))
}

/// The replayed guest ran for `bound_ns` without making the exit the log has next.
pub(crate) fn stalled(log: &mut impl LogAhead, ordinal: u64, bound_ns: u64) -> Divergence {
    let next = match log.peek(0) {
        Ok(Some(e)) => Entry::kind_name(e.kind()).to_string(),
        Ok(None) => "end of log".into(),
        Err(e) => e.to_string(),
    };
    Divergence::new(
        ordinal,
        "the replayed guest stopped making exits",
        format!("next: {next}"),
        format!("no exit for {:.1} s", bound_ns as f64 / 1e9),
    )
}

pub(crate) mod points;
mod recovery;
pub(crate) use recovery::{
    check_end, check_final_state, finish_step, recover_step, FinishStep, RecoverStep,
};

#[cfg(test)]
mod tests;
