//! What the role core tells the operator and the status file: failover notices, why a
//! VMM halted, the role a status report shows.

use std::fmt;

/// What the operator is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A primary lost its backup, won the next epoch and runs on unprotected.
    WentOnAlone {
        epoch: u64,
        why: String,
        took_ns: u64,
    },
    /// A backup went live as the primary of `epoch`.
    Live {
        epoch: u64,
        ordinal: u64,
        took_ns: u64,
        exits_verified: u64,
        divergences: u64,
    },
    /// A backup could not join; the primary stays alone.
    JoinFailed { from: String, why: String },
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
    LostClaim {
        why: String,
        epoch: u64,
        holder: String,
    },
    Unreachable {
        why: String,
        error: String,
    },
    /// The epoch is u64::MAX: there is no next one to claim.
    NoEpochLeft {
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
