//! What the role core tells the operator and the status file: failover notices, why a
//! VMM halted, the role a status report shows.

use std::fmt;

/// What the operator is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A primary lost its backup, won the next epoch and runs on unprotected.
    WentOnAlone {
        /// The epoch the primary won.
        epoch: u64,
        /// Why the backup counts as lost.
        why: String,
        /// Nanoseconds from the loss of the backup to the won claim.
        took_ns: u64,
    },
    /// A backup went live as the primary of `epoch`.
    Live {
        /// The epoch the backup won.
        epoch: u64,
        /// The exit at which it went live.
        ordinal: u64,
        /// Nanoseconds from the loss of the primary to going live.
        took_ns: u64,
        /// Exits the replay verified against the log.
        exits_verified: u64,
        /// Divergences the replay found between the log and its own run.
        divergences: u64,
    },
    /// A backup could not join; the primary stays alone.
    JoinFailed {
        /// The backup's address.
        from: String,
        /// Why it could not join.
        why: String,
    },
}

impl Notice {
    /// A failover, which status keeps as the last one.
    pub fn is_failover(&self) -> bool {
        !matches!(self, Self::JoinFailed { .. })
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WentOnAlone { epoch, why, took_ns } => write!(
                f,
                "epoch {epoch}: backup lost ({why}); went on alone in {:.0} ms",
                ms(*took_ns)
            ),
            Self::Live {
                epoch,
                ordinal,
                took_ns,
                exits_verified,
                divergences,
            } => write!(
                f,
                "epoch {epoch}: primary lost; live at exit {ordinal} {:.0} ms after the loss was detected ({exits_verified} exits verified, {divergences} divergences)",
                ms(*took_ns)
            ),
            Self::JoinFailed { from, why } => write!(
                f,
                "a backup from {from} could not join: {why}; running unprotected"
            ),
        }
    }
}

/// Why a VMM halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    /// Another VMM won the test-and-set of the next epoch.
    LostClaim {
        /// Why the peer counts as lost.
        why: String,
        /// The epoch claimed.
        epoch: u64,
        /// Who owns it, as its owner file says.
        holder: String,
    },
    /// The shared directory did not answer the claim (or failed), so the claim is not won.
    Unreachable {
        /// Why the peer counts as lost.
        why: String,
        /// The shared directory's error.
        error: String,
    },
    /// The epoch is u64::MAX: there is no next one to claim.
    NoEpochLeft {
        /// Why the peer counts as lost.
        why: String,
    },
}

impl fmt::Display for HaltReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LostClaim { why, epoch, holder } => write!(
                f,
                "peer lost ({why}) and lost the test-and-set for epoch {epoch} to {holder}"
            ),
            Self::Unreachable { why, error } => write!(
                f,
                "peer lost ({why}) and cannot reach the shared directory ({error})"
            ),
            Self::NoEpochLeft { why } => write!(
                f,
                "peer lost ({why}) and epoch {} is the last there is",
                u64::MAX
            ),
        }
    }
}

/// What a status report says about the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusView {
    /// primary, primary (alone), backup, going live, halted, stopped.
    pub label: &'static str,
    /// The backup's view: "acked" is what it verified, the log is what it read.
    pub replica: bool,
}
