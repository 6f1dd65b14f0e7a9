//! Replay in the exit loop: carrying out what `replay_core` decides at each point (the
//! ioctls, the memory writes, the clock), and going live when a live log ends.

use std::ops::ControlFlow;

use super::logged::{log_failed, LogMode};
use super::replay_core::{self, BeforeRun, Divergence, Halted, RecoverStep};
use super::Vcpu;
use crate::stop::StopReason;

impl Vcpu {
    /// Report a divergence to the replayer, which recovers from the next delta.
    pub(super) fn diverged(&mut self, d: Divergence) {
        self.point_missed();
        if let LogMode::Replay(r) = &mut self.log {
            r.diverged(d.ordinal, d.what, d.recorded, d.replayed);
        }
    }

    /// Replay, with an interrupt pending in the PIC: inject exactly the one the log has
    /// at this point, nowhere else. Returns whether it injected one.
    pub(super) fn replay_interrupt(&mut self) -> bool {
        let LogMode::Replay(r) = &mut self.log else {
            return false;
        };
        let Some(want) = replay_core::logged_interrupt(r.as_mut(), self.ordinal) else {
            return false;
        };
        // kvm_run's readiness is stale after a delta was loaded (no KVM_RUN since); the
        // recorder injected here, so only the guest's IF is left to check.
        let platform = &self.platform;
        match replay_core::check_interrupt(self.ordinal, want, self.if_flag, || {
            platform.acknowledge()
        }) {
            Ok(vector) => self.inject(vector),
            Err(d) => {
                self.diverged(d);
                false
            }
        }
    }

    /// Replay, before running the vCPU: a delta due at this ordinal replaces the stretch
    /// the recorder ran without exits. `Break` when it handled this step (with the reason
    /// to stop, if any); `Continue` to run the vCPU.
    pub(super) fn replay_before_run(&mut self) -> ControlFlow<Option<StopReason>> {
        let LogMode::Replay(r) = &mut self.log else {
            return ControlFlow::Continue(());
        };
        match replay_core::before_run(r.as_mut(), self.ordinal) {
            Err(e) => ControlFlow::Break(Some(log_failed(e))),
            Ok(BeforeRun::Run) => ControlFlow::Continue(()),
            Ok(BeforeRun::ApplyDelta(d)) => {
                if let Err(e) = self.apply_delta(*d) {
                    return ControlFlow::Break(Some(log_failed(e)));
                }
                self.deliver();
                ControlFlow::Break(None)
            }
            Ok(BeforeRun::SeekPoint(p)) => match self.seek_point(*p) {
                Some(stop) => ControlFlow::Break(Some(stop)),
                None => ControlFlow::Continue(()),
            },
            Ok(BeforeRun::Finished) => ControlFlow::Break(Some(StopReason::Finished)),
            // The state machine sees the end of the live log and goes live.
            Ok(BeforeRun::AwaitLog) => ControlFlow::Break(None),
        }
    }

    /// Replay: how long the vCPU may run for the log's next exit or point (see
    /// [`replay_core::stall_limit`]).
    pub(super) fn replay_stall_limit(&mut self, base_ns: u64) -> u64 {
        let now = ftvm_devices::Clock::now_ns(&*self.clock);
        match &mut self.log {
            LogMode::Replay(r) => replay_core::stall_limit(r.as_mut(), now, base_ns),
            _ => base_ns,
        }
    }

    /// Replay: the guest ran for the stall bound without the exit the log has next.
    pub(super) fn replay_stalled(&mut self) {
        let limit = match self.kicker.as_ref().map(|(_, p)| *p) {
            Some(crate::kicker::KickPurpose::StallWatch { limit_ns }) => {
                self.replay_stall_limit(limit_ns)
            }
            _ => 0,
        };
        if let LogMode::Replay(r) = &mut self.log {
            let d = replay_core::stalled(r.as_mut(), self.ordinal, limit);
            self.diverged(d);
        }
    }

    /// Replay, halted vCPU: the log says how time moved and what woke it.
    pub(super) fn replay_halted(&mut self) -> Option<StopReason> {
        let LogMode::Replay(r) = &mut self.log else {
            return None;
        };
        match replay_core::halted(r.as_mut(), self.ordinal) {
            Err(e) => Some(log_failed(e)),
            Ok(Halted::SetTime(t)) => {
                self.clock.freeze(t);
                self.clock.advance_to(t);
                self.deliver();
                None
            }
            Ok(Halted::DeliverLogged) => {
                let before = r.popped();
                self.deliver();
                if let LogMode::Replay(r) = &mut self.log {
                    let recovering = r.recovering;
                    if let Some(d) =
                        replay_core::untaken_input(r.as_mut(), self.ordinal, before, recovering)
                    {
                        self.diverged(d);
                    }
                }
                None
            }
            Ok(Halted::BeforeRun) => match self.replay_before_run() {
                ControlFlow::Break(stop) => stop,
                ControlFlow::Continue(()) => None,
            },
            Ok(Halted::AwaitLog) => None,
            Ok(Halted::Diverged(d)) => {
                self.diverged(d);
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
            match replay_core::recover_step(r.as_mut()) {
                Err(e) => return Some(log_failed(e)),
                Ok(RecoverStep::Skipped { exit }) => {
                    if exit {
                        r.stats.exits_skipped += 1;
                    }
                }
                // The primary died before the checkpoint came: the guest goes live.
                Ok(RecoverStep::GoLive) => return None,
                Ok(RecoverStep::Apply {
                    mut delta,
                    is_final,
                }) => {
                    r.set_recovering(false);
                    // A dirty-page delta repairs only the pages the recorder wrote since
                    // the one before; the diverged guest may have written others. The
                    // replayer's copy of the pages is the recorder's whole memory at this
                    // delta: load all of it.
                    if !delta.full {
                        if let Some(pages) = r.whole_memory() {
                            delta.pages = ft_log::pages::PageSet::Raw(pages);
                            delta.full = true;
                        }
                    }
                    let (ordinal, full, pages) = (delta.ordinal, delta.full, delta.pages.len());
                    let loading = std::time::Instant::now();
                    if let Err(e) = self.apply_delta(*delta) {
                        return Some(log_failed(e));
                    }
                    // The load is a pass over all of RAM: how long it held the replay.
                    tracing::info!(
                        ordinal,
                        full,
                        pages,
                        load_ms = loading.elapsed().as_secs_f64() * 1e3,
                        "recovered from a checkpoint"
                    );
                    if is_final {
                        // Recovered to the recorder's final state: the replay is complete.
                        return Some(StopReason::Finished);
                    }
                    self.deliver();
                    return None;
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
        self.end_point_search();
        self.clock.go_live();
        self.input_rx = self.live_input.take();
        if let Some((_, purpose)) = self.kicker.as_mut() {
            *purpose = crate::kicker::KickPurpose::EventBound {
                bound_ns: purpose.event_bound_once_live(),
            };
        }
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
}
