//! What went through a log: bytes, entries by kind, deltas.

use std::collections::BTreeMap;

use crate::entry::Entry;

/// Running totals for one log stream, filled in by [`LogStats::count`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogStats {
    /// Stream bytes counted: every entry's whole frame (a writer may start it at the
    /// stream header's length to include that too).
    pub bytes: u64,
    /// Entries counted, by kind name (see [`Entry::kind_name`]).
    pub entries: BTreeMap<&'static str, u64>,
    /// Checkpoint delta entries counted.
    pub deltas: u64,
    /// Stream bytes taken by those deltas' frames.
    pub delta_bytes: u64,
    /// Pages listed in those deltas (see [`crate::pages::PageSet::len`]).
    pub delta_pages: u64,
}

impl LogStats {
    /// Count one entry that took `frame_bytes` in the stream.
    pub fn count(&mut self, entry: &Entry, frame_bytes: usize) {
        self.bytes += frame_bytes as u64;
        *self
            .entries
            .entry(Entry::kind_name(entry.kind()))
            .or_default() += 1;
        if let Entry::Delta(d) = entry {
            self.deltas += 1;
            self.delta_bytes += frame_bytes as u64;
            self.delta_pages += d.pages.len() as u64;
        }
    }

    /// Log bytes per second of guest run time.
    pub fn bytes_per_second(&self, seconds: f64) -> f64 {
        if seconds > 0.0 {
            self.bytes as f64 / seconds
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for LogStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes;", self.bytes)?;
        for (k, n) in &self.entries {
            write!(f, " {k} {n},")?;
        }
        write!(
            f,
            " deltas {} ({} bytes, {} pages)",
            self.deltas, self.delta_bytes, self.delta_pages
        )
    }
}
