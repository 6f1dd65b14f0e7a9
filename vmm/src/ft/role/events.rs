//! What goes into the role core ([`Event`]: what the controller saw) and what comes out
//! ([`Action`]: what it must do, in order).

use super::{HaltReason, Notice, StatusView};

/// What happened, as the controller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The logging channel failed: broken, damaged, or the peer silent past the timeout.
    PeerLost {
        /// Why the peer counts as lost (for the operator).
        why: String,
        /// When the loss was seen, in nanoseconds of the core's clock.
        now_ns: u64,
    },
    /// The test-and-set of `epoch` was won.
    ClaimWon {
        /// The epoch won.
        epoch: u64,
        /// When the claim was won (ns).
        now_ns: u64,
    },
    /// Someone else created `epoch`'s owner first.
    ClaimLost {
        /// The epoch claimed.
        epoch: u64,
        /// Who owns it, as its owner file says.
        holder: String,
    },
    /// The shared directory did not answer (or failed): a claim not won.
    ClaimUnanswered {
        /// The epoch claimed.
        epoch: u64,
        /// The shared directory's error.
        why: String,
    },
    /// Primary: the backup acknowledged through exit `ordinal`; `held_bytes` of output
    /// still wait for acknowledgement.
    AckReceived {
        /// The highest exit the backup acknowledged.
        ordinal: u64,
        /// Output bytes still held.
        held_bytes: u64,
        /// When the acknowledgement was seen (ns).
        now_ns: u64,
    },
    /// Primary: a backup finished its state transfer and follows the log.
    BackupJoined,
    /// Primary: a backup knocked but could not join (`from`: its address).
    BackupFailedToJoin {
        /// The backup's address.
        from: String,
        /// Why it could not join.
        why: String,
    },
    /// Backup: its own replay has verified through exit `ordinal`; `held_bytes` of output
    /// wait for verification.
    Verified {
        /// The highest exit the replay verified.
        ordinal: u64,
        /// Output bytes still held.
        held_bytes: u64,
        /// When the verification was seen (ns).
        now_ns: u64,
    },
    /// The guest stopped by itself (`held_bytes` of its output not yet released).
    GuestStopped {
        /// Output bytes not yet released.
        held_bytes: u64,
        /// When the stop was seen (ns).
        now_ns: u64,
    },
    /// The replay consumed the whole log and the vCPU now runs the guest live.
    WentLive {
        /// The exit at which the vCPU went live.
        ordinal: u64,
        /// Exits the replay verified against the log.
        exits_verified: u64,
        /// Divergences the replay found between the log and its own run.
        divergences: u64,
        /// When the vCPU went live (ns).
        now_ns: u64,
    },
    /// The operator (a signal) asked the VMM to stop.
    StopRequested,
    /// Time passed (the controller's poll).
    Tick {
        /// The time now, in nanoseconds of the core's clock.
        now_ns: u64,
    },
}

impl Event {
    /// The event's name, for messages and [`super::RoleError::Unexpected`].
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
    Claim {
        /// The epoch to claim.
        epoch: u64,
    },
    /// Release everything held and stop holding: no peer to wait for.
    SetAlone,
    /// Drop everything held: it must never appear.
    DiscardHeld,
    /// Backup: release the output its replay verified through `through`.
    Release {
        /// The highest exit verified.
        through: u64,
    },
    /// Stop recording (pause the vCPU, log off, resume); best effort: a vCPU that cannot
    /// pause has stopped, and its guest-stopped event follows.
    StopLogging,
    /// Primary, log closed: wait at most `limit_ns` for the sender to put the rest of the
    /// log on the channel, so shutting it does not cut the end off.
    WaitSent {
        /// The longest wait, in nanoseconds.
        limit_ns: u64,
    },
    /// Epoch `epoch` won by a backup: say so, then close the log so the replay drains what
    /// was received and the vCPU goes live ([`Event::WentLive`] follows).
    GoLive {
        /// The epoch the backup won.
        epoch: u64,
        /// Why the primary counts as lost.
        why: String,
    },
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
