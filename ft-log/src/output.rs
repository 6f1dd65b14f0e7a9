//! The output rule's bookkeeping: console bytes wait until the backup has verified the exit
//! that produced them.
//!
//! A byte the primary emits must never be contradicted after a failover, so it may leave
//! only once the backup has replayed and verified the log through the exit that produced
//! it (DESIGN.md section 3). The guest keeps running meanwhile; its output queues here,
//! tagged with the exit ordinal, and leaves in order as acks arrive. A primary with no
//! backup (it won the test-and-set) is *alone* and releases at once.
//!
//! No I/O and no clocks: callers pass `now_ns` (any monotonic clock) so the delay
//! statistics mean something and tests are deterministic.

use std::collections::VecDeque;

/// Bytes the guest wrote to its console at exit `ordinal`, at byte `offset` of the console
/// stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// What the gate has done so far. A *chunk* is the bytes of one [`OutputGate::hold`] call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputStats {
    /// Bytes currently held.
    pub bytes_held: u64,
    pub bytes_released: u64,
    /// [`Released`] values handed out (what the VMM writes, each one write).
    pub releases: u64,
    /// Sum over released chunks of (release time - hold time); 0 for a chunk released at
    /// once.
    pub total_delay_ns: u128,
    pub max_delay_ns: u64,
    /// Chunks released (the denominator for [`OutputStats::mean_delay_ns`]).
    pub chunks_released: u64,
    /// Bytes dropped by [`OutputGate::discard`].
    pub bytes_discarded: u64,
}

impl OutputStats {
    /// Mean time a chunk waited for its ack, 0 before any release.
    pub fn mean_delay_ns(&self) -> u64 {
        if self.chunks_released == 0 {
            return 0;
        }
        u64::try_from(self.total_delay_ns / u128::from(self.chunks_released)).unwrap_or(u64::MAX)
    }
}

/// One held chunk; its bytes are the next `len` bytes of [`OutputGate::bytes`].
#[derive(Debug, Clone, Copy)]
struct Held {
    ordinal: u64,
    len: u64,
    held_at_ns: u64,
}

/// Holds console output until the exit that produced it is acknowledged.
///
/// Invariant: outside a method, either nothing is held or the oldest held chunk's ordinal
/// is above `acked` (and the gate is not alone); bytes leave strictly in the order they
/// were produced, each exactly once.
#[derive(Debug, Clone)]
pub struct OutputGate {
    alone: bool,
    acked: u64,
    /// Console stream offset of `bytes[0]`: everything before it was released (or
    /// discarded).
    next: u64,
    bytes: VecDeque<u8>,
    chunks: VecDeque<Held>,
    stats: OutputStats,
}

impl OutputGate {
    /// A gate whose console stream starts at `offset`; holding (not alone) until acks
    /// arrive.
    pub fn new(offset: u64) -> Self {
        Self {
            alone: false,
            acked: 0,
            next: offset,
            bytes: VecDeque::new(),
            chunks: VecDeque::new(),
            stats: OutputStats::default(),
        }
    }

    /// The guest produced `bytes` at exit `ordinal`. Released at once (returned) when the
    /// gate is alone or `ordinal <= acked`; otherwise held. Output already held stays
    /// ahead of it, so a chunk whose ordinal is acked still waits behind an older
    /// unacknowledged one (possible only if ordinals went backwards, a caller bug).
    /// Nothing to release for empty `bytes`.
    pub fn hold(&mut self, ordinal: u64, bytes: &[u8], now_ns: u64) -> Option<Released> {
        if bytes.is_empty() {
            return None;
        }
        if self.chunks.is_empty() && (self.alone || ordinal <= self.acked) {
            let r = Released {
                offset: self.next,
                bytes: bytes.to_vec(),
            };
            self.next = self.next.saturating_add(bytes.len() as u64);
            self.stats.bytes_released =
                self.stats.bytes_released.saturating_add(bytes.len() as u64);
            self.stats.releases += 1;
            self.stats.chunks_released += 1;
            return Some(r);
        }
        self.bytes.extend(bytes);
        self.chunks.push_back(Held {
            ordinal,
            len: bytes.len() as u64,
            held_at_ns: now_ns,
        });
        self.stats.bytes_held = self.stats.bytes_held.saturating_add(bytes.len() as u64);
        None
    }

    /// The peer has verified through `ordinal` (acks never go backwards: a smaller one is
    /// ignored). Returns what may leave now, in order, merged into as few chunks as
    /// practical (what is released is contiguous, so at most one).
    pub fn ack(&mut self, ordinal: u64, now_ns: u64) -> Vec<Released> {
        if ordinal <= self.acked {
            return Vec::new();
        }
        self.acked = ordinal;
        let n = self
            .chunks
            .iter()
            .take_while(|c| c.ordinal <= ordinal)
            .count();
        self.release_chunks(n, now_ns)
    }

    /// No peer any more (after winning the test-and-set) or a peer again (false): going
    /// alone releases everything held. A new peer joins by state transfer and acks from
    /// its starting ordinal on, so going back to holding releases nothing.
    pub fn set_alone(&mut self, alone: bool, now_ns: u64) -> Vec<Released> {
        self.alone = alone;
        if alone {
            self.release_chunks(self.chunks.len(), now_ns)
        } else {
            Vec::new()
        }
    }

    /// Release the `n` oldest held chunks as one contiguous piece.
    ///
    /// (Offsets here can come from a checkpoint sent by the peer: all arithmetic on them
    /// saturates rather than wrapping or panicking.)
    fn release_chunks(&mut self, n: usize, now_ns: u64) -> Vec<Released> {
        if n == 0 {
            return Vec::new();
        }
        let mut len = 0u64;
        for c in self.chunks.drain(..n) {
            len = len.saturating_add(c.len);
            let delay = now_ns.saturating_sub(c.held_at_ns);
            self.stats.total_delay_ns += u128::from(delay);
            self.stats.max_delay_ns = self.stats.max_delay_ns.max(delay);
            self.stats.chunks_released += 1;
        }
        // `len` counts bytes that are in `bytes`, so it fits in usize.
        let take = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let r = Released {
            offset: self.next,
            bytes: self.bytes.drain(..take).collect(),
        };
        self.next = self.next.saturating_add(take as u64);
        self.stats.bytes_held = self.stats.bytes_held.saturating_sub(take as u64);
        self.stats.bytes_released = self.stats.bytes_released.saturating_add(take as u64);
        self.stats.releases += 1;
        vec![r]
    }

    pub fn is_alone(&self) -> bool {
        self.alone
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Console stream offset after everything produced so far (held or released).
    pub fn offset(&self) -> u64 {
        self.next.saturating_add(self.bytes.len() as u64)
    }

    /// Console stream offset of the oldest held byte: everything before it has been
    /// released or discarded.
    pub fn released_offset(&self) -> u64 {
        self.next
    }

    pub fn held_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn stats(&self) -> &OutputStats {
        &self.stats
    }

    /// The console stream is really at `offset`: a replay that had diverged was put back
    /// in step by a checkpoint, and what it holds came from the diverged stretch (never
    /// verified, so never to be released). Drops that and continues at `offset`.
    /// Returns how many bytes were dropped.
    pub fn rebase(&mut self, offset: u64) -> u64 {
        let n = self.bytes.len() as u64;
        self.bytes.clear();
        self.chunks.clear();
        self.next = offset;
        self.stats.bytes_held = 0;
        self.stats.bytes_discarded = self.stats.bytes_discarded.saturating_add(n);
        n
    }

    /// Discard everything held (a VMM that lost the test-and-set must never emit it).
    /// Returns how many bytes were dropped. They stay counted in [`OutputGate::offset`]:
    /// the guest did produce them.
    pub fn discard(&mut self) -> u64 {
        let n = self.bytes.len() as u64;
        self.bytes.clear();
        self.chunks.clear();
        self.next = self.next.saturating_add(n);
        self.stats.bytes_held = 0;
        self.stats.bytes_discarded = self.stats.bytes_discarded.saturating_add(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simnet::Rng;

    fn rel(offset: u64, bytes: &[u8]) -> Released {
        Released {
            offset,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn holds_until_acked_then_releases_in_order() {
        let mut g = OutputGate::new(100);
        assert!(!g.is_alone());
        assert_eq!(g.hold(1, b"ab", 10), None);
        assert_eq!(g.hold(2, b"c", 20), None);
        assert_eq!(g.hold(4, b"de", 30), None);
        assert_eq!(g.offset(), 105);
        assert_eq!(g.held_bytes(), 5);
        assert_eq!(g.ack(1, 50), vec![rel(100, b"ab")]);
        // Ack 3 covers ordinal 2 but not 4.
        assert_eq!(g.ack(3, 60), vec![rel(102, b"c")]);
        assert_eq!(g.acked(), 3);
        assert_eq!(g.released_offset(), 103);
        // Output at an acked ordinal goes straight out only when nothing is waiting.
        assert_eq!(g.ack(9, 70), vec![rel(103, b"de")]);
        assert_eq!(g.hold(9, b"f", 80), Some(rel(105, b"f")));
        assert_eq!(g.hold(10, b"", 80), None);
        assert_eq!(g.offset(), 106);
        let s = g.stats();
        assert_eq!(s.bytes_held, 0);
        assert_eq!(s.bytes_released, 6);
        assert_eq!(s.releases, 4);
        assert_eq!(s.chunks_released, 4);
        assert_eq!(s.total_delay_ns, 40 + 40 + 40);
        assert_eq!(s.max_delay_ns, 40);
        assert_eq!(s.mean_delay_ns(), 30);
    }

    #[test]
    fn acks_going_backwards_are_ignored() {
        let mut g = OutputGate::new(0);
        g.hold(5, b"x", 0);
        assert_eq!(g.ack(7, 1).len(), 1);
        g.hold(8, b"y", 2);
        assert_eq!(g.ack(6, 3), vec![]);
        assert_eq!(g.ack(7, 3), vec![]);
        assert_eq!(g.acked(), 7);
        assert_eq!(g.held_bytes(), 1);
        assert_eq!(g.ack(8, 4), vec![rel(1, b"y")]);
    }

    #[test]
    fn ordinals_going_backwards_keep_the_byte_order() {
        let mut g = OutputGate::new(0);
        g.hold(5, b"a", 0);
        g.ack(3, 0);
        // Ordinal 2 is acked, but "a" (ordinal 5) was produced first and is still held.
        assert_eq!(g.hold(2, b"b", 0), None);
        assert_eq!(g.ack(4, 0), vec![]);
        assert_eq!(g.ack(5, 0), vec![rel(0, b"ab")]);
    }

    #[test]
    fn going_alone_releases_everything_and_stays_open() {
        let mut g = OutputGate::new(0);
        g.hold(1, b"ab", 0);
        g.hold(2, b"cd", 5);
        assert_eq!(g.set_alone(true, 10), vec![rel(0, b"abcd")]);
        assert!(g.is_alone());
        assert_eq!(g.hold(3, b"e", 11), Some(rel(4, b"e")));
        assert_eq!(g.stats().max_delay_ns, 10);
        // A new backup: holding again, from the next unacked ordinal.
        assert_eq!(g.set_alone(false, 12), vec![]);
        assert_eq!(g.hold(4, b"f", 13), None);
        assert_eq!(g.ack(4, 14), vec![rel(5, b"f")]);
    }

    #[test]
    fn offsets_at_the_end_of_the_range_saturate() {
        // A checkpoint from the peer may carry any console position.
        let mut g = OutputGate::new(u64::MAX - 1);
        assert!(g.hold(1, b"abc", 0).is_none());
        assert_eq!(g.offset(), u64::MAX);
        let r = g.ack(1, 0);
        assert_eq!(r.len(), 1);
        assert_eq!(g.released_offset(), u64::MAX);
        g.rebase(u64::MAX);
        assert_eq!(g.hold(2, b"d", 0), None);
        assert_eq!(g.discard(), 1);
        g.set_alone(true, 0);
        assert!(g.hold(3, b"e", 0).is_some());
    }

    #[test]
    fn discard_drops_what_is_held_and_only_that() {
        let mut g = OutputGate::new(10);
        g.hold(1, b"ab", 0);
        g.ack(1, 0);
        g.hold(2, b"cde", 0);
        assert_eq!(g.discard(), 3);
        assert_eq!(g.held_bytes(), 0);
        assert_eq!(g.offset(), 15);
        assert_eq!(g.released_offset(), 15);
        assert_eq!(g.stats().bytes_discarded, 3);
        assert_eq!(g.stats().bytes_released, 2);
        assert_eq!(g.ack(5, 0), vec![]);
        assert_eq!(g.set_alone(true, 0), vec![]);
    }

    /// Random holds, acks (some stale), alone switches and a final discard or go-alone:
    /// the released bytes are exactly the produced ones, in order, contiguous, each once,
    /// and nothing leaves above the ack unless alone.
    #[test]
    fn random_operations_keep_the_invariants() {
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let start = rng.below(1000);
            let mut g = OutputGate::new(start);
            // Produced console stream, with the ordinal of each byte.
            let mut produced: Vec<(u64, u8)> = Vec::new();
            let mut out: Vec<u8> = Vec::new();
            let mut ordinal = 0u64;
            let mut now = 0u64;
            let check =
                |g: &OutputGate, r: &Released, out: &mut Vec<u8>, produced: &[(u64, u8)]| {
                    assert_eq!(
                        r.offset,
                        start + out.len() as u64,
                        "seed {seed}: gap or overlap"
                    );
                    assert!(!r.bytes.is_empty());
                    for (i, b) in r.bytes.iter().enumerate() {
                        let (ord, want) = produced[out.len() + i];
                        assert_eq!(*b, want, "seed {seed}");
                        assert!(
                            g.is_alone() || ord <= g.acked(),
                            "seed {seed}: ordinal {ord} > ack {}",
                            g.acked()
                        );
                    }
                    out.extend(&r.bytes);
                };
            for _ in 0..200 {
                now += rng.below(1000);
                match rng.below(10) {
                    0..=4 => {
                        ordinal += rng.below(3);
                        let n = rng.below(5) as usize;
                        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                        produced.extend(bytes.iter().map(|&b| (ordinal, b)));
                        if let Some(r) = g.hold(ordinal, &bytes, now) {
                            check(&g, &r, &mut out, &produced);
                        }
                    }
                    5..=7 => {
                        let a = if rng.below(4) == 0 {
                            rng.below(g.acked() + 1)
                        } else {
                            g.acked() + rng.below(ordinal.saturating_sub(g.acked()) + 2)
                        };
                        let before = g.acked();
                        for r in g.ack(a, now) {
                            check(&g, &r, &mut out, &produced);
                        }
                        assert_eq!(g.acked(), before.max(a));
                    }
                    8 if rng.below(5) == 0 => {
                        let alone = !g.is_alone();
                        let rs = g.set_alone(alone, now);
                        assert!(rs.len() <= 1);
                        for r in rs {
                            check(&g, &r, &mut out, &produced);
                        }
                    }
                    _ => {}
                }
                assert_eq!(g.offset(), start + produced.len() as u64);
                assert_eq!(g.held_bytes() + out.len() as u64, produced.len() as u64);
                assert_eq!(g.stats().bytes_held, g.held_bytes());
                assert_eq!(g.stats().bytes_released, out.len() as u64);
                assert!(g.is_alone() && g.held_bytes() == 0 || !g.is_alone());
            }
            if rng.below(2) == 0 {
                for r in g.set_alone(true, now) {
                    check(&g, &r, &mut out, &produced);
                }
                assert_eq!(out.len(), produced.len(), "seed {seed}");
            } else {
                let held = g.held_bytes();
                assert_eq!(g.discard(), held);
                assert_eq!(out.len() as u64 + held, produced.len() as u64);
            }
            assert!(
                g.stats().max_delay_ns as u128 <= g.stats().total_delay_ns
                    || g.stats().chunks_released == 0
            );
        }
    }
}
