//! The end of a logged run: the recorder logs a final delta and the digest of the final
//! state; the replayer compares digests (recovering through the final delta if it had
//! diverged).

use ft_log::{Digest, Entry};
use ftvm_devices::Clock;

use super::checkpoint::differing_pages;
use super::logged::{LogMode, LogReport};
use super::replay_core::{self, FinishStep};
use super::Vcpu;
use crate::record::{digest, Recorder};
use crate::replay::Replayer;
use crate::stop::StopReason;

impl Vcpu {
    /// At the end of a run: what the log says of it (None when nothing was logged).
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
            LogMode::Record(rec) => Some(self.finish_recording(rec, stop, guest_ns)),
            LogMode::Replay(r) => {
                // Back in place: loading a delta updates the replayer's counters.
                self.log = LogMode::Replay(r);
                let report = self.finish_replay(guest_ns);
                self.log = LogMode::Off;
                Some(report)
            }
        }
    }

    /// The recorder's end: a full delta and the shutdown record with the final digest.
    fn finish_recording(
        &mut self,
        mut rec: Box<Recorder>,
        stop: &StopReason,
        guest_ns: u64,
    ) -> LogReport {
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
                let r = super::logged::log_held_output(
                    self.held_output.as_ref(),
                    self.ordinal,
                    &mut rec,
                )
                .and_then(|_| rec.log(&Entry::Delta(Box::new(d))))
                .and_then(|_| rec.log(&shutdown))
                .and_then(|_| rec.flush());
                if let Err(e) = r {
                    problem = Some(e.to_string());
                }
            }
            (Err(e), _) => problem = Some(e.to_string()),
            (_, Err(e)) => problem = Some(e.to_string()),
        }
        LogReport {
            recording: true,
            stats: rec.stats.clone(),
            replay: None,
            digest: ours.ok(),
            recorded_digest: None,
            guest_ns,
            problem,
        }
    }

    /// The replayer's end (its log in `self.log`): what is left of the log is the final
    /// delta (if not consumed) and the shutdown record.
    fn finish_replay(&mut self, guest_ns: u64) -> LogReport {
        let mut problem = None;
        let mut recorded = None;
        let mut ours: Option<Digest> = None;
        loop {
            let LogMode::Replay(r) = &mut self.log else {
                unreachable!("finish_log put the replayer back");
            };
            let recovering = r.recovering;
            match replay_core::finish_step(r.as_mut(), recovering) {
                Ok(FinishStep::Compare {
                    delta,
                    recorded: recorded_now,
                }) => {
                    // In step so far: compare our state with the recorder's final one
                    // before the final delta is loaded.
                    let mine = digest(&self.fd, &self.memory, &self.platform).ok();
                    let memory = &self.memory;
                    let differs =
                        replay_core::check_final_state(self.ordinal, recorded_now, mine, || {
                            (differing_pages(memory, &delta), delta.pages.len())
                        });
                    if let Some(d) = differs {
                        // Recover through the final delta like any divergence.
                        self.diverged(d);
                        let applied = self.apply_delta(*delta);
                        self.replayer().set_recovering(false);
                        if let Err(e) = applied {
                            problem = Some(e.to_string());
                        }
                    } else {
                        ours = mine;
                    }
                }
                Ok(FinishStep::Apply(delta)) => {
                    if let Err(e) = self.apply_delta(*delta) {
                        problem = Some(e.to_string());
                    }
                    self.replayer().set_recovering(false);
                }
                Ok(FinishStep::Skipped { exit }) => {
                    if exit {
                        r.stats.exits_skipped += 1;
                    }
                }
                Ok(FinishStep::End { ordinal, digest }) => {
                    recorded = Some(digest);
                    if let Err(e) = replay_core::check_end(ordinal, self.ordinal) {
                        problem = problem.or(Some(e.to_string()));
                    }
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
        let r = self.replayer();
        LogReport {
            recording: false,
            stats: r.log_stats.clone(),
            replay: Some(r.stats.clone()),
            digest: ours,
            recorded_digest: recorded,
            guest_ns,
            problem,
        }
    }

    /// The replayer, while `finish_replay` runs.
    fn replayer(&mut self) -> &mut Replayer {
        match &mut self.log {
            LogMode::Replay(r) => r,
            _ => unreachable!("finish_log put the replayer back"),
        }
    }
}
