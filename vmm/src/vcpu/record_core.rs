//! The recorder's decisions, with no I/O: given what happened at a point of the exit loop,
//! what goes into the log. The vCPU carries the answer out (`logged.rs`): it writes the
//! entry, or takes a checkpoint delta, which reads KVM and guest memory. The replayer's
//! counterpart is `replay_core`.

use ft_log::{Entry, ExitRecord};

/// What happened at a point of the exit loop while recording.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Point {
    /// A synchronous exit (its ordinal already advanced), with what the vCPU saw there.
    Exit(ExitRecord),
    /// The halted vCPU woke with guest time frozen at `now_ns`; the log's latest time is
    /// `last_logged_ns`.
    Woke {
        ordinal: u64,
        now_ns: u64,
        last_logged_ns: u64,
    },
    /// These bytes moved from the host into the UART's receive FIFO.
    SerialMoved { ordinal: u64, bytes: Vec<u8> },
    /// This interrupt vector was injected.
    Injected { ordinal: u64, vector: u8 },
    /// An event that waited past its bound is about to be delivered at a kick: a point
    /// the host chose, which the replayer cannot find by counting exits.
    Kicked,
    /// The backup diverged and asked for a checkpoint.
    CheckpointAsked,
}

/// What the recorder does about a [`Point`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// Nothing to log.
    Nothing,
    /// Write this entry.
    Log(Entry),
    /// Take a checkpoint delta here and log it; `full`: every page, not only those dirtied
    /// since the last delta.
    Delta { full: bool },
}

/// The recorder's decision for one point.
pub(crate) fn decide(point: Point) -> Record {
    match point {
        Point::Exit(exit) => Record::Log(Entry::Exit(exit)),
        // Time the log already holds need not be said again: the replayer keeps it.
        Point::Woke {
            now_ns,
            last_logged_ns,
            ..
        } if now_ns == last_logged_ns => Record::Nothing,
        Point::Woke {
            ordinal, now_ns, ..
        } => Record::Log(Entry::TimeSample {
            ordinal,
            time_ns: now_ns,
        }),
        Point::SerialMoved { bytes, .. } if bytes.is_empty() => Record::Nothing,
        Point::SerialMoved { ordinal, bytes } => Record::Log(Entry::SerialInput { ordinal, bytes }),
        Point::Injected { ordinal, vector } => Record::Log(Entry::Interrupt { ordinal, vector }),
        // The state at a kick is shipped: the pages dirtied since the last delta suffice,
        // as the backup holds everything before them.
        Point::Kicked => Record::Delta { full: false },
        // A diverged backup wrote pages of its own: it needs every page back.
        Point::CheckpointAsked => Record::Delta { full: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft_log::ExitKind;

    fn exit(ordinal: u64) -> ExitRecord {
        ExitRecord {
            ordinal,
            time_ns: 1_000,
            kind: ExitKind::PioOut,
            rip: 0xffff_ffff_8100_0000,
            addr: 0x3f8,
            size: 1,
            value: u64::from(b'x'),
        }
    }

    #[test]
    fn every_exit_is_logged_as_it_was_seen() {
        assert_eq!(
            decide(Point::Exit(exit(7))),
            Record::Log(Entry::Exit(exit(7)))
        );
    }

    #[test]
    fn a_wake_logs_time_only_when_it_moved() {
        let woke = |now_ns| Point::Woke {
            ordinal: 9,
            now_ns,
            last_logged_ns: 5_000,
        };
        assert_eq!(decide(woke(5_000)), Record::Nothing);
        assert_eq!(
            decide(woke(9_000)),
            Record::Log(Entry::TimeSample {
                ordinal: 9,
                time_ns: 9_000
            })
        );
    }

    #[test]
    fn serial_input_is_logged_at_its_ordinal_unless_nothing_moved() {
        let moved = |bytes: &[u8]| Point::SerialMoved {
            ordinal: 3,
            bytes: bytes.to_vec(),
        };
        assert_eq!(decide(moved(b"")), Record::Nothing);
        assert_eq!(
            decide(moved(b"ls\n")),
            Record::Log(Entry::SerialInput {
                ordinal: 3,
                bytes: b"ls\n".to_vec()
            })
        );
    }

    #[test]
    fn injections_are_logged_with_their_vector() {
        assert_eq!(
            decide(Point::Injected {
                ordinal: 4,
                vector: 0x20
            }),
            Record::Log(Entry::Interrupt {
                ordinal: 4,
                vector: 0x20
            })
        );
    }

    #[test]
    fn a_kick_ships_the_dirty_pages_and_a_divergence_every_page() {
        assert_eq!(decide(Point::Kicked), Record::Delta { full: false });
        assert_eq!(decide(Point::CheckpointAsked), Record::Delta { full: true });
    }
}
