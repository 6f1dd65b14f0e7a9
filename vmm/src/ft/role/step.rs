//! The transitions of [`RoleCore`]: one function per kind of event.

use super::{Action, Event, HaltReason, Notice, PairRole, RoleCore, RoleError, Side};

impl RoleCore {
    /// Take one event; the actions to carry out, in order. An event that makes no sense in
    /// the current role changes nothing and is reported as an error (never a panic): the
    /// controller logs it and goes on.
    pub fn step(&mut self, event: Event) -> Result<Vec<Action>, RoleError> {
        match event {
            Event::PeerLost { why, now_ns } => self.peer_lost(why, now_ns),
            Event::ClaimWon { epoch, now_ns } => self.claim_won(epoch, now_ns),
            Event::ClaimLost { epoch, ref holder } => {
                let holder = holder.clone();
                self.claim_failed(epoch, &event, |why| HaltReason::LostClaim {
                    why,
                    epoch,
                    holder,
                })
            }
            Event::ClaimUnanswered { epoch, ref why } => {
                let error = why.clone();
                self.claim_failed(epoch, &event, |why| HaltReason::Unreachable { why, error })
            }
            Event::AckReceived {
                ordinal,
                held_bytes,
                now_ns,
            } => {
                if !self.awaits_acks() {
                    return Err(self.unexpected(&event));
                }
                Ok(self.acknowledged(ordinal, held_bytes, now_ns))
            }
            Event::Verified {
                ordinal,
                held_bytes,
                now_ns,
            } => {
                if !self.is_replaying() {
                    return Err(self.unexpected(&event));
                }
                let mut actions = vec![Action::Release { through: ordinal }];
                actions.extend(self.acknowledged(ordinal, held_bytes, now_ns));
                Ok(actions)
            }
            Event::BackupJoined => {
                if !self.accepts_backup() {
                    return Err(self.unexpected(&event));
                }
                self.role = PairRole::PrimaryProtected;
                // A new backup starts acknowledging from the state it was given.
                self.acked = 0;
                Ok(Vec::new())
            }
            Event::BackupFailedToJoin { from, why } => {
                if !self.accepts_backup() {
                    return Err(self.unexpected(&Event::BackupFailedToJoin { from, why }));
                }
                // The transfer may have got as far as logging into a pipe and holding output.
                Ok(vec![
                    Action::Announce(Notice::JoinFailed { from, why }),
                    Action::AbortPipe,
                    Action::SetAlone,
                    Action::StopLogging,
                ])
            }
            Event::GuestStopped { held_bytes, now_ns } => {
                self.held_bytes = held_bytes;
                self.guest_stopped(now_ns, &event)
            }
            Event::WentLive {
                ordinal,
                exits_verified,
                divergences,
                now_ns,
            } => {
                // Only a backup that won its epoch may go live: anything else would be a
                // second VMM outputting in the same epoch.
                let PairRole::GoingLive { since_ns } = self.role else {
                    return Err(self.unexpected(&event));
                };
                self.role = PairRole::PrimaryAlone;
                Ok(vec![
                    Action::SetAlone,
                    Action::ServeStdout,
                    Action::Announce(Notice::Live {
                        epoch: self.epoch,
                        ordinal,
                        took_ns: now_ns.saturating_sub(since_ns),
                        exits_verified,
                        divergences,
                    }),
                ])
            }
            Event::StopRequested => {
                if self.is_finished() {
                    return Ok(Vec::new());
                }
                Ok(self.finish())
            }
            Event::Tick { now_ns } => Ok(self.tick(now_ns)),
        }
    }

    /// Exits acknowledged through `ordinal` (by the backup, or by this backup's own
    /// replay), `held_bytes` still held: a drain may be over.
    fn acknowledged(&mut self, ordinal: u64, held_bytes: u64, now_ns: u64) -> Vec<Action> {
        self.acked = self.acked.max(ordinal);
        self.held_bytes = held_bytes;
        self.drained(now_ns)
    }

    fn tick(&mut self, now_ns: u64) -> Vec<Action> {
        match self.role {
            PairRole::Draining { deadline_ns, .. } if now_ns >= deadline_ns => {
                // Waited long enough for acknowledgements: finish with what is held still
                // held (a winner of the test-and-set, if any, will not be this VMM).
                self.end_drain(0)
            }
            PairRole::PrimaryAlone
            | PairRole::PrimaryProtected
            | PairRole::Backup
            | PairRole::GoingLive { .. } => {
                let due = self
                    .last_status_ns
                    .is_none_or(|last| now_ns.saturating_sub(last) >= self.config.status_every_ns);
                if !due {
                    return Vec::new();
                }
                self.last_status_ns = Some(now_ns);
                vec![Action::WriteStatus(self.status_view())]
            }
            _ => Vec::new(),
        }
    }

    /// The link failed: before going on, claim the next epoch.
    fn peer_lost(&mut self, why: String, now_ns: u64) -> Result<Vec<Action>, RoleError> {
        let (side, guest_stopped) = match self.role {
            PairRole::PrimaryProtected => (Side::Primary, false),
            PairRole::Backup => (Side::Backup, false),
            PairRole::Draining { side, .. } => (side, true),
            _ => {
                return Err(self.unexpected(&Event::PeerLost { why, now_ns }));
            }
        };
        let mut actions = vec![Action::ShutLink];
        if side == Side::Primary {
            // Unstall the guest (its log has nowhere to go); its output stays held.
            actions.push(Action::AbortPipe);
        }
        let Some(epoch) = self.epoch.checked_add(1) else {
            // Nothing to claim: as good as lost.
            actions.extend(self.halt(HaltReason::NoEpochLeft { why }));
            return Ok(actions);
        };
        actions.push(Action::Claim { epoch });
        self.role = PairRole::Claiming {
            epoch,
            side,
            lost_at_ns: now_ns,
            why,
            guest_stopped,
        };
        Ok(actions)
    }

    fn claim_won(&mut self, won: u64, now_ns: u64) -> Result<Vec<Action>, RoleError> {
        let PairRole::Claiming {
            epoch,
            side,
            lost_at_ns,
            ref why,
            guest_stopped,
        } = self.role
        else {
            return Err(self.unexpected(&Event::ClaimWon { epoch: won, now_ns }));
        };
        if won != epoch {
            return Err(RoleError::WrongEpoch {
                asked: epoch,
                got: won,
            });
        }
        let why = why.clone();
        self.epoch = epoch;
        match (side, guest_stopped) {
            (Side::Primary, false) => {
                self.role = PairRole::PrimaryAlone;
                Ok(vec![
                    Action::StopLogging,
                    Action::SetAlone,
                    Action::Announce(Notice::WentOnAlone {
                        epoch,
                        why,
                        took_ns: now_ns.saturating_sub(lost_at_ns),
                    }),
                ])
            }
            (Side::Backup, false) => {
                // Everything received is replayed before the guest goes live.
                self.role = PairRole::GoingLive {
                    since_ns: lost_at_ns,
                };
                Ok(vec![Action::GoLive { epoch, why }])
            }
            (Side::Primary, true) => {
                // The guest's last output is this VMM's to release now.
                let mut actions = vec![Action::SetAlone];
                self.held_bytes = 0;
                actions.extend(self.finish());
                Ok(actions)
            }
            (Side::Backup, true) => Ok(self.finish()),
        }
    }

    fn claim_failed(
        &mut self,
        answered: u64,
        event: &Event,
        reason: impl FnOnce(String) -> HaltReason,
    ) -> Result<Vec<Action>, RoleError> {
        let PairRole::Claiming { epoch, ref why, .. } = self.role else {
            return Err(self.unexpected(event));
        };
        if answered != epoch {
            return Err(RoleError::WrongEpoch {
                asked: epoch,
                got: answered,
            });
        }
        let why = why.clone();
        Ok(self.halt(reason(why)))
    }

    /// Lost: what is held never appears, and the VMM stops for good.
    fn halt(&mut self, reason: HaltReason) -> Vec<Action> {
        let side = self.role.side();
        let mut actions = Vec::new();
        if side == Side::Backup {
            // The replay stops reading (a primary aborted its log when the peer went).
            actions.push(Action::AbortPipe);
        }
        actions.push(Action::DiscardHeld);
        actions.push(Action::Halt(reason));
        self.held_bytes = 0;
        self.role = PairRole::Halted { side };
        actions.push(Action::WriteStatus(self.status_view()));
        actions
    }

    fn guest_stopped(&mut self, now_ns: u64, event: &Event) -> Result<Vec<Action>, RoleError> {
        match self.role {
            PairRole::PrimaryProtected | PairRole::Backup => {
                let side = self.role.side();
                let mut actions = Vec::new();
                if side == Side::Primary {
                    // The log ends here; the sender ships what is left, then finishes.
                    actions.push(Action::ClosePipe);
                }
                let deadline_ns = now_ns.saturating_add(self.config.drain_limit_ns);
                self.role = PairRole::Draining { side, deadline_ns };
                actions.extend(self.drained(now_ns));
                Ok(actions)
            }
            PairRole::PrimaryAlone | PairRole::GoingLive { .. } => Ok(self.finish()),
            PairRole::Claiming {
                ref mut guest_stopped,
                ..
            } => {
                *guest_stopped = true;
                Ok(Vec::new())
            }
            _ => Err(self.unexpected(event)),
        }
    }

    /// Draining and nothing held any more: finish.
    fn drained(&mut self, now_ns: u64) -> Vec<Action> {
        match self.role {
            PairRole::Draining { deadline_ns, .. } if self.held_bytes == 0 => {
                self.end_drain(deadline_ns.saturating_sub(now_ns))
            }
            _ => Vec::new(),
        }
    }

    fn end_drain(&mut self, limit_ns: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.role.side() == Side::Primary {
            actions.push(Action::WaitSent { limit_ns });
        }
        actions.extend(self.finish());
        actions
    }

    /// End the run: the link goes, a primary's log ends in order (a backup's is dropped:
    /// nothing more of it will be replayed), the vCPU stops.
    fn finish(&mut self) -> Vec<Action> {
        let side = self.role.side();
        let mut actions = Vec::new();
        if self.role.has_link() {
            actions.push(Action::ShutLink);
        }
        actions.push(match side {
            Side::Primary => Action::ClosePipe,
            Side::Backup => Action::AbortPipe,
        });
        actions.push(Action::FinishGuest);
        self.role = PairRole::Stopped { side };
        actions.push(Action::WriteStatus(self.status_view()));
        actions
    }
}
