//! The roles of one VMM of a pair as a core that does no I/O (DESIGN.md section 3), in the
//! style of raft-rs and of `ft_log::liveness`: [`RoleCore::step`] takes what happened (an
//! [`Event`]: the peer was lost, a claim was won, the guest stopped, ...) and returns what
//! to do (a list of [`Action`]s: shut the link, claim epoch E, release or discard the held
//! output, go live, halt, ...), which the controller ([`super::node`]) carries out in order.
//! Time is passed in, in nanoseconds of one monotonic clock; nothing here reads a clock, a
//! socket or a file, so every transition is unit-tested (`role_tests.rs`) and a simulated
//! pair (`role_sim.rs`) checks that at most one VMM outputs as the primary of an epoch.
//!
//! ```text
//!  PrimaryAlone --BackupJoined--> PrimaryProtected --PeerLost--+
//!   ^  ^  (BackupFailedToJoin: stays alone)                    |
//!   |  +-- won: stop logging, release held output --+          v
//!   |                                               +---- Claiming E+1 --lost/unanswered--> Halted
//!   +-- WentLive -- GoingLive <-- won: replay the rest -+          ^   (held output discarded)
//!  Backup --PeerLost------------------------------------------------+
//!  any running state --GuestStopped--> Draining (a peer still acks held output) --> Stopped
//!  any running state --StopRequested--> Stopped
//! ```
//!
//! The safety rule the core keeps: a VMM outputs on its own (alone, or live after a
//! failover) only in an epoch it has won, and one that loses (or cannot reach) the
//! test-and-set discards what it holds and halts for good. Events that make no sense in a
//! state change nothing and come back as a [`RoleError`].

mod notice;
#[cfg(test)]
mod sim;
mod step;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_end;

pub use notice::{HaltReason, Notice, StatusView};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("{event} makes no sense while {role}: ignored")]
    Unexpected {
        event: &'static str,
        role: &'static str,
    },
    #[error("the answer to a claim of epoch {got} came while claiming epoch {asked}: ignored")]
    WrongEpoch { asked: u64, got: u64 },
}

/// Which side of the pair a VMM was on when it started claiming, draining or finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Primary,
    Backup,
}

/// Where a VMM of the pair is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairRole {
    /// Runs the guest in its epoch, releases output at once, accepts a backup.
    PrimaryAlone,
    /// Logs to a backup; output waits for the backup's acknowledgements.
    PrimaryProtected,
    /// Replays the primary's log; releases only what it verified itself.
    Backup,
    /// Lost its peer and asked for the test-and-set of `epoch`; waits for the answer.
    Claiming {
        epoch: u64,
        side: Side,
        lost_at_ns: u64,
        /// Why the peer counts as lost (for the operator).
        why: String,
        /// The guest had already stopped: win or lose, the VMM finishes.
        guest_stopped: bool,
    },
    /// A backup that won the test-and-set, replaying the rest of the log.
    GoingLive { since_ns: u64 },
    /// The guest stopped while a peer was still acknowledging: wait (until `deadline_ns`)
    /// for the output it printed last to be acknowledged.
    Draining { side: Side, deadline_ns: u64 },
    /// Lost the test-and-set (or the shared directory): never outputs again.
    Halted { side: Side },
    /// The guest stopped, or the VMM was told to stop.
    Stopped { side: Side },
}

impl PairRole {
    pub fn name(&self) -> &'static str {
        match self {
            Self::PrimaryAlone => "primary (alone)",
            Self::PrimaryProtected => "primary",
            Self::Backup => "backup",
            Self::Claiming { .. } => "claiming",
            Self::GoingLive { .. } => "going live",
            Self::Draining { .. } => "draining",
            Self::Halted { .. } => "halted",
            Self::Stopped { .. } => "stopped",
        }
    }

    /// The side whose view status reports take (a backup's "acked" is what it verified).
    fn side(&self) -> Side {
        match self {
            Self::PrimaryAlone | Self::PrimaryProtected => Side::Primary,
            Self::Backup | Self::GoingLive { .. } => Side::Backup,
            Self::Claiming { side, .. }
            | Self::Draining { side, .. }
            | Self::Halted { side }
            | Self::Stopped { side } => *side,
        }
    }

    /// A logging channel with a peer is up.
    fn has_link(&self) -> bool {
        matches!(
            self,
            Self::PrimaryProtected | Self::Backup | Self::Draining { .. }
        )
    }
}

/// What happened, as the controller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The logging channel failed: broken, damaged, or the peer silent past the timeout.
    PeerLost { why: String, now_ns: u64 },
    /// The test-and-set of `epoch` was won.
    ClaimWon { epoch: u64, now_ns: u64 },
    /// Someone else created `epoch`'s owner first.
    ClaimLost { epoch: u64, holder: String },
    /// The shared directory did not answer (or failed): a claim not won.
    ClaimUnanswered { epoch: u64, why: String },
    /// Primary: the backup acknowledged through exit `ordinal`; `held_bytes` of output
    /// still wait for acknowledgement.
    AckReceived {
        ordinal: u64,
        held_bytes: u64,
        now_ns: u64,
    },
    /// Primary: a backup finished its state transfer and follows the log.
    BackupJoined,
    /// Primary: a backup knocked but could not join (`from`: its address).
    BackupFailedToJoin { from: String, why: String },
    /// Backup: its own replay has verified through exit `ordinal`; `held_bytes` of output
    /// wait for verification.
    Verified {
        ordinal: u64,
        held_bytes: u64,
        now_ns: u64,
    },
    /// The guest stopped by itself (`held_bytes` of its output not yet released).
    GuestStopped { held_bytes: u64, now_ns: u64 },
    /// The replay consumed the whole log and the vCPU now runs the guest live.
    WentLive {
        ordinal: u64,
        exits_verified: u64,
        divergences: u64,
        now_ns: u64,
    },
    /// The operator (a signal) asked the VMM to stop.
    StopRequested,
    /// Time passed (the controller's poll).
    Tick { now_ns: u64 },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Self::PeerLost { .. } => "peer lost",
            Self::ClaimWon { .. } => "claim won",
            Self::ClaimLost { .. } => "claim lost",
            Self::ClaimUnanswered { .. } => "claim unanswered",
            Self::AckReceived { .. } => "ack received",
            Self::BackupJoined => "backup joined",
            Self::BackupFailedToJoin { .. } => "backup failed to join",
            Self::Verified { .. } => "replay verified",
            Self::GuestStopped { .. } => "guest stopped",
            Self::WentLive { .. } => "went live",
            Self::StopRequested => "stop requested",
            Self::Tick { .. } => "tick",
        }
    }
}

/// What the controller must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Drop the logging channel (its threads stop on their own).
    ShutLink,
    /// Drop the log buffer: the recorder's writes vanish, the replay's reads fail.
    AbortPipe,
    /// End the log after what is buffered.
    ClosePipe,
    /// Try the test-and-set of `epoch` in the shared directory; answer with
    /// [`Event::ClaimWon`], [`Event::ClaimLost`] or [`Event::ClaimUnanswered`].
    Claim { epoch: u64 },
    /// Release everything held and stop holding: no peer to wait for.
    SetAlone,
    /// Drop everything held: it must never appear.
    DiscardHeld,
    /// Backup: release the output its replay verified through `through`.
    Release { through: u64 },
    /// Stop recording (pause the vCPU, log off, resume); best effort: a vCPU that cannot
    /// pause has stopped, and its guest-stopped event follows.
    StopLogging,
    /// Primary, log closed: wait at most `limit_ns` for the sender to put the rest of the
    /// log on the channel, so shutting it does not cut the end off.
    WaitSent { limit_ns: u64 },
    /// Epoch `epoch` won by a backup: say so, then close the log so the replay drains what
    /// was received and the vCPU goes live ([`Event::WentLive`] follows).
    GoLive { epoch: u64, why: String },
    /// Show the guest's console on this VMM's stdout from here on.
    ServeStdout,
    /// Tell the operator (and, for a failover, keep it for status).
    Announce(Notice),
    /// Write the status file with this view.
    WriteStatus(StatusView),
    /// Stop the vCPU: the VMM ends with the guest stopped.
    FinishGuest,
    /// Stop the vCPU: the VMM ends halted, for `HaltReason`.
    Halt(HaltReason),
}

/// The core's settings.
#[derive(Debug, Clone, Copy)]
pub struct RoleConfig {
    /// How long a stopped guest's last output may wait for acknowledgement.
    pub drain_limit_ns: u64,
    /// How often the status file is rewritten.
    pub status_every_ns: u64,
}

/// One VMM's role, epoch and what it holds.
#[derive(Debug, Clone)]
pub struct RoleCore {
    role: PairRole,
    epoch: u64,
    config: RoleConfig,
    /// Output bytes held, as last reported.
    held_bytes: u64,
    /// Primary: the backup's highest acknowledgement. Backup: the highest exit verified.
    acked: u64,
    last_status_ns: Option<u64>,
}

impl RoleCore {
    /// A primary that owns `epoch` and has no backup yet.
    pub fn primary(epoch: u64, config: RoleConfig) -> Self {
        Self::new(PairRole::PrimaryAlone, epoch, config)
    }

    /// A backup following the primary of `epoch`.
    pub fn backup(epoch: u64, config: RoleConfig) -> Self {
        Self::new(PairRole::Backup, epoch, config)
    }

    fn new(role: PairRole, epoch: u64, config: RoleConfig) -> Self {
        Self {
            role,
            epoch,
            config,
            held_bytes: 0,
            acked: 0,
            last_status_ns: None,
        }
    }

    pub fn role(&self) -> &PairRole {
        &self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Halted or stopped: nothing more will happen.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.role,
            PairRole::Halted { .. } | PairRole::Stopped { .. }
        )
    }

    /// A primary alone takes a backup that knocks.
    pub fn accepts_backup(&self) -> bool {
        matches!(self.role, PairRole::PrimaryAlone)
    }

    /// The replay decides what this VMM releases (a backup, or one going live).
    pub fn is_replaying(&self) -> bool {
        matches!(
            self.role,
            PairRole::Backup
                | PairRole::GoingLive { .. }
                | PairRole::Draining {
                    side: Side::Backup,
                    ..
                }
        )
    }

    /// A primary following its backup's acknowledgements.
    pub fn awaits_acks(&self) -> bool {
        matches!(
            self.role,
            PairRole::PrimaryProtected
                | PairRole::Draining {
                    side: Side::Primary,
                    ..
                }
        )
    }

    /// The status view of the current role.
    pub fn status_view(&self) -> StatusView {
        StatusView {
            label: match self.role {
                PairRole::Claiming { .. } | PairRole::Draining { .. } => match self.role.side() {
                    Side::Primary => "primary",
                    Side::Backup => "backup",
                },
                ref r => r.name(),
            },
            replica: self.role.side() == Side::Backup,
        }
    }

    fn unexpected(&self, event: &Event) -> RoleError {
        RoleError::Unexpected {
            event: event.name(),
            role: self.role.name(),
        }
    }
}
