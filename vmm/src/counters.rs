//! What the vCPU's log shares with whoever controls it, whichever way it runs: the recorder
//! counts the checkpoint deltas it logs, the replayer what it verified, applied and found
//! diverged. The fault-tolerance controller reads them for the output rule (a backup
//! acknowledges what it verified), for status and for resynchronisation. Here rather than
//! in `record` or `replay` because both, and `ft`, use them.

use std::sync::atomic::{AtomicBool, AtomicU64};

/// What a live recording or replay shares with its controller while it runs (for the
/// output rule, status and resynchronisation).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Replay: exit ordinal through which everything has been executed and checked (what
    /// a backup acknowledges). Record: unused.
    pub verified: AtomicU64,
    /// Checkpoint deltas logged (record) or applied (replay).
    pub deltas: AtomicU64,
    /// Replay: divergences found between the log and the replayed run. Record: unused.
    pub divergences: AtomicU64,
    /// Replay: diverged and waiting for a delta (a backup asks its primary for one).
    pub recovering: AtomicBool,
}
