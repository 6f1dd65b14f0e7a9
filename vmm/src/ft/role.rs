//! The roles of one VMM of a pair as a core that does no I/O (DESIGN.md section 3), in the
//! style of raft-rs and of `ft_log::liveness`: [`RoleCore::step`] takes what happened (an
//! [`Event`]: the peer was lost, a claim was won, the guest stopped, ...) and returns what
//! to do (a list of [`Action`]s: shut the link, claim epoch E, release or discard the held
//! output, go live, halt, ...), which the controller ([`super::node`]) carries out in order.
//! Time is passed in, in nanoseconds of one monotonic clock; nothing here reads a clock, a
//! socket or a file, so every transition is unit-tested (`role/tests.rs`,
//! `role/tests_end.rs`) and a simulated pair (`role/sim.rs`) checks that at most one VMM
//! outputs as the primary of an epoch.
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

mod events;
mod notice;
#[cfg(test)]
mod sim;
mod step;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_end;

pub use events::{Action, Event};
pub use notice::{HaltReason, Notice, StatusView};

/// Why the role core refused an event (its state is left unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The event makes no sense in the current role.
    #[error("{event} makes no sense while {role}: ignored")]
    Unexpected {
        /// The event's name ([`Event::name`]).
        event: &'static str,
        /// The role's name ([`PairRole::name`]).
        role: &'static str,
    },
    /// A test-and-set answer came for another epoch than the one being claimed.
    #[error("the answer to a claim of epoch {got} came while claiming epoch {asked}: ignored")]
    WrongEpoch {
        /// The epoch being claimed.
        asked: u64,
        /// The epoch the answer was for.
        got: u64,
    },
}

/// Which side of the pair a VMM was on when it started claiming, draining or finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The VMM running the guest and logging it.
    Primary,
    /// The VMM replaying the primary's log.
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
        /// The epoch claimed (one past the one the pair ran in).
        epoch: u64,
        /// The side this VMM was on when it lost its peer.
        side: Side,
        /// When the peer was lost, in nanoseconds of the core's clock.
        lost_at_ns: u64,
        /// Why the peer counts as lost (for the operator).
        why: String,
        /// The guest had already stopped: win or lose, the VMM finishes.
        guest_stopped: bool,
    },
    /// A backup that won the test-and-set, replaying the rest of the log.
    GoingLive {
        /// When the primary was lost (ns); the failover time is counted from it.
        since_ns: u64,
    },
    /// The guest stopped while a peer was still acknowledging: wait (until `deadline_ns`)
    /// for the output it printed last to be acknowledged.
    Draining {
        /// The side this VMM was on when the guest stopped.
        side: Side,
        /// When to stop waiting for acknowledgements, in nanoseconds of the core's clock.
        deadline_ns: u64,
    },
    /// Lost the test-and-set (or the shared directory): never outputs again.
    Halted {
        /// The side this VMM was on when it halted.
        side: Side,
    },
    /// The guest stopped, or the VMM was told to stop.
    Stopped {
        /// The side this VMM was on when it stopped.
        side: Side,
    },
}

impl PairRole {
    /// The role's name, as the operator sees it in messages and status.
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

    /// The role this VMM plays now.
    pub fn role(&self) -> &PairRole {
        &self.role
    }

    /// The epoch this VMM runs in: the one its primary owns, or the last it won.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Output bytes held, as the last event reported.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Primary: the backup's highest acknowledged exit. Backup: the highest exit it verified.
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
