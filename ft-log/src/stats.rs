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
    /// Of those deltas, the full checkpoints (a diverged backup's resync, a log's last).
    pub full_checkpoints: u64,
    /// Stream bytes taken by the full checkpoints' frames.
    pub full_checkpoint_bytes: u64,
    /// Pages listed in the full checkpoints (with the page codec: those that changed).
    pub full_checkpoint_pages: u64,
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
            if d.full {
                self.full_checkpoints += 1;
                self.full_checkpoint_bytes += frame_bytes as u64;
                self.full_checkpoint_pages += d.pages.len() as u64;
            }
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
        )?;
        if self.full_checkpoints > 0 {
            write!(
                f,
                ", of them full checkpoints {} ({} bytes, {} pages)",
                self.full_checkpoints, self.full_checkpoint_bytes, self.full_checkpoint_pages
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Delta, Page};
    use crate::pages::PageSet;

    fn delta(full: bool, pages: usize) -> Entry {
        let page = |i: usize| Page {
            gpa: i as u64 * 4096,
            data: vec![1; 4096],
        };
        Entry::Delta(Box::new(Delta {
            ordinal: 1,
            time_ns: 0,
            full,
            state_encoding: Default::default(),
            vcpu: Vec::new(),
            devices: Vec::new(),
            pages: PageSet::Raw((0..pages).map(page).collect()),
        }))
    }

    #[test]
    fn full_checkpoints_are_counted_among_the_deltas() {
        let mut s = LogStats::default();
        s.count(&delta(false, 3), 100);
        assert!(!s.to_string().contains("full"), "{s}");
        s.count(&delta(true, 2), 50);
        s.count(
            &Entry::Nic {
                mac: [2, 0, 0, 0, 0, 1],
            },
            7,
        );
        assert_eq!((s.deltas, s.delta_bytes, s.delta_pages), (2, 150, 5));
        assert_eq!(
            (
                s.full_checkpoints,
                s.full_checkpoint_bytes,
                s.full_checkpoint_pages
            ),
            (1, 50, 2)
        );
        assert_eq!(s.bytes, 157);
        assert!(
            s.to_string().ends_with(
                "deltas 2 (150 bytes, 5 pages), of them full checkpoints 1 (50 bytes, 2 pages)"
            ),
            "{s}"
        );
    }
}
