//! The output rule for network frames (issue 11), as a core that does no I/O: which of the
//! frames the guest transmits may leave this host, and when.
//!
//! Each frame is tagged with the exit that produced it. A primary with a backup holds it
//! until the backup has verified that exit; alone, it lets it go at once. A backup holds
//! what its replay produces: those frames were the primary's to send, so when it goes
//! live at exit N it drops every held frame of an exit up to N (the primary sent them, or
//! they are lost with it, as on real hardware, and TCP retransmits them) and lets the
//! rest go. A VMM that lost the test-and-set drops everything and sends nothing more.
//!
//! Unlike console bytes, frames are not written at an offset of a shared stream, so they
//! must never be sent twice: the backup never releases on its own verification.
//! Held bytes are capped: past the cap the newest frame is dropped and counted (a full
//! NIC queue); the guest's TCP recovers, the guest is never stalled for it.
//!
//! The time each frame was held by the rule (from the guest's transmit to the release an
//! acknowledgement or the loss of the backup allowed) is summed and its maximum kept: the
//! output rule's cost to every packet. Time comes in as nanoseconds of the caller's clock.

use std::collections::VecDeque;

/// Frames' bytes held at most by default.
pub const DEFAULT_FRAMES_CAP: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Frames wait for the backup's verification of their exit (a primary with a backup).
    Hold,
    /// Frames wait for this VMM to go live (a backup; its own verification releases none).
    Standby,
    /// Frames leave at once (a primary alone, a backup gone live).
    Pass,
    /// Nothing leaves ever again (this VMM lost the test-and-set).
    Dead,
}

/// What happened to frames, for the status and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameCounts {
    /// Frames let go to the TAP, at once or after being held.
    pub released: u64,
    /// Bytes held now, waiting for the backup's acknowledgement.
    pub held_bytes: u64,
    /// Frames dropped because holding them would have passed the cap.
    pub dropped_over_cap: u64,
    /// Held frames dropped because this VMM lost, or a backup went live past them.
    pub discarded: u64,
    /// Frames released after the rule held them (by an acknowledgement, or alone), with
    /// the sum and maximum of their hold times.
    pub held_released: u64,
    /// Sum of the hold times of the `held_released` frames, in nanoseconds.
    pub hold_total_ns: u64,
    /// Longest hold time of a `held_released` frame, in nanoseconds.
    pub hold_max_ns: u64,
}

impl FrameCounts {
    /// The mean hold time of the frames released after being held.
    pub fn mean_hold_ns(&self) -> u64 {
        self.hold_total_ns
            .checked_div(self.held_released)
            .unwrap_or(0)
    }
}

/// A held frame: its exit, when the guest sent it, its bytes.
#[derive(Debug)]
struct Held {
    ordinal: u64,
    at_ns: u64,
    frame: Vec<u8>,
}

/// The output rule's decisions for one VMM's frames: what is held, what leaves, what is
/// dropped (see the module docs).
#[derive(Debug)]
pub struct FrameGate {
    mode: Mode,
    held: VecDeque<Held>,
    held_bytes: u64,
    cap: u64,
    /// What happened to frames so far (`held_bytes` is kept apart, see [`FrameGate::held_bytes`]).
    pub counts: FrameCounts,
}

impl FrameGate {
    /// A primary's gate: alone until a backup joins.
    pub fn primary(cap: u64) -> Self {
        Self::with_mode(Mode::Pass, cap)
    }

    /// A backup's gate: holds until it goes live.
    pub fn backup(cap: u64) -> Self {
        Self::with_mode(Mode::Standby, cap)
    }

    fn with_mode(mode: Mode, cap: u64) -> Self {
        Self {
            mode,
            held: VecDeque::new(),
            held_bytes: 0,
            cap,
            counts: FrameCounts::default(),
        }
    }

    /// The guest transmitted `frame` at exit `ordinal`, at `now_ns`: the frames to send now.
    pub fn produce(&mut self, ordinal: u64, frame: &[u8], now_ns: u64) -> Vec<Vec<u8>> {
        match self.mode {
            Mode::Pass => {
                self.counts.released += 1;
                vec![frame.to_vec()]
            }
            Mode::Dead => {
                self.counts.discarded += 1;
                Vec::new()
            }
            Mode::Hold | Mode::Standby => {
                let len = frame.len() as u64;
                if self.held_bytes.saturating_add(len) > self.cap {
                    self.counts.dropped_over_cap += 1;
                } else {
                    self.held_bytes += len;
                    self.held.push_back(Held {
                        ordinal,
                        at_ns: now_ns,
                        frame: frame.to_vec(),
                    });
                }
                Vec::new()
            }
        }
    }

    /// A primary's backup verified through `ordinal` (at `now_ns`): the frames to send
    /// now, in order.
    pub fn ack(&mut self, ordinal: u64, now_ns: u64) -> Vec<Vec<u8>> {
        if self.mode != Mode::Hold {
            return Vec::new();
        }
        self.release_while(|o| o <= ordinal, Some(now_ns))
    }

    /// A primary got a backup: frames wait for it from now on.
    pub fn protect(&mut self) {
        if self.mode == Mode::Pass {
            self.mode = Mode::Hold;
        }
    }

    /// A primary lost its backup (and won the next epoch) at `now_ns`: everything held
    /// leaves now, and later frames at once.
    pub fn alone(&mut self, now_ns: u64) -> Vec<Vec<u8>> {
        // A backup's frames leave only by going live (`go_live` knows which are its own).
        if matches!(self.mode, Mode::Dead | Mode::Standby) {
            return Vec::new();
        }
        self.mode = Mode::Pass;
        self.release_while(|_| true, Some(now_ns))
    }

    /// A backup went live at exit `ordinal`: frames of exits up to it were the old
    /// primary's (dropped); later ones leave now, and later frames at once.
    pub fn go_live(&mut self, ordinal: u64) -> Vec<Vec<u8>> {
        if self.mode == Mode::Dead {
            return Vec::new();
        }
        let old = self.pop_while(|o| o <= ordinal);
        self.counts.discarded += old.len() as u64;
        self.mode = Mode::Pass;
        // Its own frames waited for the failover, not for an acknowledgement: no hold time.
        self.release_while(|_| true, None)
    }

    /// This VMM lost: nothing it holds, or produces later, may ever leave.
    pub fn die(&mut self) -> u64 {
        self.mode = Mode::Dead;
        let n = self.held.len() as u64;
        self.counts.discarded += n;
        self.held.clear();
        self.held_bytes = 0;
        n
    }

    /// Bytes of the frames held now.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// The held frames, oldest first, as long as `wanted` says so of their exit.
    fn pop_while(&mut self, mut wanted: impl FnMut(u64) -> bool) -> Vec<Held> {
        let mut out = Vec::new();
        while self.held.front().is_some_and(|h| wanted(h.ordinal)) {
            if let Some(h) = self.held.pop_front() {
                self.held_bytes -= h.frame.len() as u64;
                out.push(h);
            }
        }
        out
    }

    /// [`Self::pop_while`], the frames leaving (counted as released); with the time of
    /// release, their hold times are counted too.
    fn release_while(
        &mut self,
        wanted: impl FnMut(u64) -> bool,
        now_ns: Option<u64>,
    ) -> Vec<Vec<u8>> {
        let out = self.pop_while(wanted);
        self.counts.released += out.len() as u64;
        if let Some(now) = now_ns {
            for h in &out {
                let held = now.saturating_sub(h.at_ns);
                self.counts.held_released += 1;
                self.counts.hold_total_ns = self.counts.hold_total_ns.saturating_add(held);
                self.counts.hold_max_ns = self.counts.hold_max_ns.max(held);
            }
        }
        out.into_iter().map(|h| h.frame).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(tag: u8) -> Vec<u8> {
        vec![tag; 60]
    }

    #[test]
    fn a_primary_holds_frames_until_their_exit_is_verified() {
        let mut g = FrameGate::primary(1 << 20);
        assert_eq!(g.produce(1, &f(1), 1), vec![f(1)], "alone: at once");
        g.protect();
        assert!(g.produce(5, &f(5), 5).is_empty());
        assert!(g.produce(7, &f(7), 7).is_empty());
        assert!(g.ack(4, 4).is_empty());
        assert_eq!(g.ack(6, 6), vec![f(5)]);
        assert_eq!(g.held_bytes(), 60);
        assert!(g.produce(9, &f(9), 9).is_empty());
        // The backup is lost: the rest leaves, in order, and later frames at once.
        assert_eq!(g.alone(20), vec![f(7), f(9)]);
        assert_eq!(g.produce(10, &f(10), 10), vec![f(10)]);
        assert_eq!(g.counts.released, 5);
        // Held: 5 from 5 to 6, 7 and 9 until the loss at 20; 1 and 10 never were.
        assert_eq!(g.counts.held_released, 3);
        assert_eq!(g.counts.hold_total_ns, 1 + 13 + 11);
        assert_eq!(g.counts.hold_max_ns, 13);
        assert_eq!(g.counts.mean_hold_ns(), 8);
    }

    #[test]
    fn a_backup_never_sends_the_primarys_frames() {
        let mut g = FrameGate::backup(1 << 20);
        assert!(g.produce(3, &f(3), 3).is_empty());
        assert!(g.produce(8, &f(8), 8).is_empty());
        assert!(
            g.ack(100, 100).is_empty(),
            "its own verification releases nothing"
        );
        assert!(g.alone(20).is_empty(), "nor does the claim it won");
        assert!(g.produce(12, &f(12), 12).is_empty());
        // Live at exit 8: frames of exits 3 and 8 were the primary's; 12 is its own.
        assert_eq!(g.go_live(8), vec![f(12)]);
        assert_eq!(g.counts.discarded, 2);
        assert_eq!(g.counts.released, 1);
        assert_eq!(g.produce(13, &f(13), 13), vec![f(13)]);
    }

    #[test]
    fn a_loser_sends_nothing_ever_again() {
        let mut g = FrameGate::primary(1 << 20);
        g.protect();
        g.produce(1, &f(1), 1);
        assert_eq!(g.die(), 1);
        assert!(g.produce(2, &f(2), 2).is_empty());
        assert!(g.ack(10, 10).is_empty());
        assert!(g.alone(20).is_empty());
        assert!(g.go_live(10).is_empty());
        assert_eq!(g.counts.discarded, 2);
        assert_eq!(g.counts.released, 0);
    }

    #[test]
    fn held_frames_are_capped_by_dropping_the_newest() {
        let mut g = FrameGate::backup(150);
        g.produce(1, &f(1), 1);
        g.produce(2, &f(2), 2);
        g.produce(3, &f(3), 3); // 180 > 150
        assert_eq!(g.counts.dropped_over_cap, 1);
        assert_eq!(g.held_bytes(), 120);
        assert_eq!(g.go_live(0), vec![f(1), f(2)]);
    }
}
