//! The recorder's decisions, with no I/O: given what happened at a point of the exit loop,
//! what goes into the log. The vCPU carries the answer out (`logged.rs`): it writes the
//! entry, or takes a checkpoint delta, which reads KVM and guest memory. The replayer's
//! counterpart is `replay_core`.

use ft_log::{Entry, EventPoint, ExitRecord};

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
    Kicked(Kick),
    /// The backup diverged and asked for a checkpoint.
    CheckpointAsked,
}

/// Where a kick found the vCPU, and what the host allows there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kick {
    /// The host's breakpoints are exact in guest kernel mode (probed) and placement by
    /// breakpoint is not turned off.
    pub by_breakpoint: bool,
    /// The guest's privilege level there.
    pub cpl: u8,
    /// The instruction the SYSCALL repair's breakpoint watches, if armed.
    pub watched_rip: Option<u64>,
    /// Guest time since the last checkpoint delta was logged.
    pub since_delta_ns: u64,
    /// A delta at least this often (guest time; 0: never for this reason), so that a
    /// replay that diverges recovers within it.
    pub delta_interval_ns: u64,
    /// The point (None when the registers could not be read).
    pub point: Option<EventPoint>,
}

/// How the event at a kick reaches the replayer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KickChoice {
    /// As an [`EventPoint`] the replayer finds again with a breakpoint.
    Point,
    /// As a checkpoint delta: in user mode, where breakpoints never fire here.
    DeltaUserMode,
    /// As a checkpoint delta: the last one is older than the delta interval.
    DeltaPeriodic,
    /// As a checkpoint delta: the host has no exact breakpoints, placement is off, or the
    /// point could not be named (its registers unreadable, or on the SYSCALL repair's
    /// own breakpoint).
    DeltaOther,
}

/// How a kick's event is shipped.
pub(crate) fn kick_choice(kick: &Kick) -> KickChoice {
    match &kick.point {
        _ if !kick.by_breakpoint => KickChoice::DeltaOther,
        _ if kick.cpl != 0 => KickChoice::DeltaUserMode,
        Some(_) if kick.delta_interval_ns > 0 && kick.since_delta_ns >= kick.delta_interval_ns => {
            KickChoice::DeltaPeriodic
        }
        Some(p) if Some(p.rip) != kick.watched_rip => KickChoice::Point,
        _ => KickChoice::DeltaOther,
    }
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
        // Where the replayer can find the point again, it is named; elsewhere the state
        // there is shipped: the pages dirtied since the last delta suffice, as the backup
        // holds everything before them.
        Point::Kicked(kick) => match (kick_choice(&kick), kick.point) {
            (KickChoice::Point, Some(p)) => Record::Log(Entry::Point(Box::new(p))),
            _ => Record::Delta { full: false },
        },
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

    fn kick(cpl: u8, rip: u64) -> Kick {
        Kick {
            by_breakpoint: true,
            cpl,
            watched_rip: Some(0xffff_ffff_8100_0f00),
            since_delta_ns: 400_000_000,
            delta_interval_ns: 1_000_000_000,
            point: Some(EventPoint {
                ordinal: 12,
                time_ns: 5_000_000,
                rip,
                rflags: 0x246,
                gprs: [3; 16],
                branches: None,
            }),
        }
    }

    #[test]
    fn a_kick_in_kernel_mode_names_its_point() {
        let k = kick(0, 0xffff_ffff_8100_1000);
        assert_eq!(kick_choice(&k), KickChoice::Point);
        assert_eq!(
            decide(Point::Kicked(k.clone())),
            Record::Log(Entry::Point(Box::new(k.point.unwrap())))
        );
    }

    #[test]
    fn a_kick_ships_the_dirty_pages_where_no_breakpoint_can_find_it() {
        let user = kick(3, 0x40_1000);
        assert_eq!(kick_choice(&user), KickChoice::DeltaUserMode);
        assert_eq!(decide(Point::Kicked(user)), Record::Delta { full: false });
        let watched = kick(0, 0xffff_ffff_8100_0f00);
        assert_eq!(kick_choice(&watched), KickChoice::DeltaOther);
        let off = Kick {
            by_breakpoint: false,
            ..kick(0, 0xffff_ffff_8100_1000)
        };
        assert_eq!(kick_choice(&off), KickChoice::DeltaOther);
        assert_eq!(decide(Point::Kicked(off)), Record::Delta { full: false });
        let unread = Kick {
            point: None,
            ..kick(0, 0xffff_ffff_8100_1000)
        };
        assert_eq!(decide(Point::Kicked(unread)), Record::Delta { full: false });
    }

    #[test]
    fn a_kick_long_after_the_last_delta_is_a_delta_so_that_replays_recover() {
        let due = Kick {
            since_delta_ns: 1_000_000_000,
            ..kick(0, 0xffff_ffff_8100_1000)
        };
        assert_eq!(kick_choice(&due), KickChoice::DeltaPeriodic);
        assert_eq!(
            decide(Point::Kicked(due.clone())),
            Record::Delta { full: false }
        );
        let never = Kick {
            delta_interval_ns: 0,
            ..due
        };
        assert_eq!(kick_choice(&never), KickChoice::Point);
    }

    #[test]
    fn a_diverged_backup_gets_every_page() {
        assert_eq!(decide(Point::CheckpointAsked), Record::Delta { full: true });
    }
}
