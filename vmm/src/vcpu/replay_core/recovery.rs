//! The replay core after a divergence (skip the log to the next delta) and at the end of
//! the log (the final delta, the shutdown record and the digests).

use ft_log::{Delta, Digest, Entry};

use super::{Divergence, LogAhead, ReplayCoreError};

/// One step of the recovery after a divergence: entries are skipped up to a delta.
#[derive(Debug, PartialEq)]
pub enum RecoverStep {
    /// An entry was skipped (an exit, or another kind).
    Skipped { exit: bool },
    /// The primary died before the checkpoint came: the guest goes live.
    GoLive,
    /// Load this delta (taken off the log); `is_final` when the recording ends with it.
    Apply { delta: Box<Delta>, is_final: bool },
}

/// One step through what is left of the log at the end of a replay.
#[derive(Debug, PartialEq)]
pub enum FinishStep {
    /// The final delta, reached in step: compare the digests before loading it
    /// (`recorded` is the shutdown record's, when it follows).
    Compare {
        delta: Box<Delta>,
        recorded: Option<Digest>,
    },
    /// A delta reached while recovering: load it.
    Apply(Box<Delta>),
    /// An entry that no longer matters was skipped.
    Skipped { exit: bool },
    /// The shutdown record: the recorder's final digest and exit.
    End { ordinal: u64, digest: Digest },
}

/// One step of the recovery after a divergence.
pub(crate) fn recover_step(log: &mut impl LogAhead) -> Result<RecoverStep, ReplayCoreError> {
    let live = log.is_live();
    match log.peek(0)? {
        None if live => Ok(RecoverStep::GoLive),
        None => Err(ReplayCoreError::NoShutdown),
        // A live backup recovers only from a full checkpoint (which its primary takes
        // when asked): a dirty-page delta lists the pages the primary wrote, not those the
        // diverged backup wrote on its own.
        Some(Entry::Delta(d)) if live && !d.full => {
            let _ = log.pop();
            Ok(RecoverStep::Skipped { exit: false })
        }
        Some(Entry::Delta(_)) => {
            let Ok(Some(Entry::Delta(delta))) = log.pop() else {
                return Err(ReplayCoreError::DeltaVanished);
            };
            let is_final = matches!(log.peek(0), Ok(Some(Entry::Shutdown { .. })));
            Ok(RecoverStep::Apply { delta, is_final })
        }
        Some(Entry::Shutdown { .. }) => Err(ReplayCoreError::NoCheckpoint),
        Some(e) => {
            let exit = matches!(e, Entry::Exit(_));
            let _ = log.pop();
            Ok(RecoverStep::Skipped { exit })
        }
    }
}

/// One step through what is left at the end of a replay: the final delta (if not
/// consumed) and the shutdown record.
pub(crate) fn finish_step(
    log: &mut impl LogAhead,
    recovering: bool,
) -> Result<FinishStep, ReplayCoreError> {
    match log.pop()? {
        Some(Entry::Delta(delta)) if !recovering => {
            let recorded = match log.peek(0) {
                Ok(Some(Entry::Shutdown { digest, .. })) => Some(*digest),
                _ => None,
            };
            Ok(FinishStep::Compare { delta, recorded })
        }
        Some(Entry::Delta(delta)) => Ok(FinishStep::Apply(delta)),
        Some(Entry::Shutdown {
            digest, ordinal, ..
        }) => Ok(FinishStep::End { ordinal, digest }),
        Some(e) => Ok(FinishStep::Skipped {
            exit: matches!(e, Entry::Exit(_)),
        }),
        None => Err(ReplayCoreError::NoShutdown),
    }
}

/// The end of the recording against the end of the replay: both at the same exit.
pub fn check_end(recorded: u64, replayed: u64) -> Result<(), ReplayCoreError> {
    if recorded == replayed {
        Ok(())
    } else {
        Err(ReplayCoreError::EndsElsewhere { recorded, replayed })
    }
}

/// The final state, in step with the recorder so far, against the recorder's final
/// digest: state that never showed at an exit diverged (on hosts that cannot trap RDTSC:
/// the kernel's entropy pool). `differing` counts the pages that differ, asked only then.
pub fn check_final_state(
    ordinal: u64,
    recorded: Option<Digest>,
    mine: Option<Digest>,
    differing: impl FnOnce() -> (usize, usize),
) -> Option<Divergence> {
    let (Some(recorded), Some(mine)) = (recorded, mine) else {
        return None;
    };
    if recorded == mine {
        return None;
    }
    let (differing, total) = differing();
    Some(Divergence::new(
        ordinal,
        "final state differs without having shown at an exit",
        recorded.to_string(),
        format!(
            "{mine} ({differing} pages differ from the recorder's final {total} non-zero pages)"
        ),
    ))
}
