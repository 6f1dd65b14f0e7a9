//! The output rule's bookkeeping: console bytes wait until the backup has verified the exit
//! that produced them.
//!
//! A byte the primary emits must never be contradicted after a failover, so it may leave
//! only once the backup has replayed and verified the log through the exit that produced
//! it (DESIGN.md section 3). The guest keeps running meanwhile; its output queues here,
//! tagged with the exit ordinal, and leaves in order as acks arrive. A primary with no
//! backup (it won the test-and-set) is *alone* and releases at once.
//!
//! Held output is capped ([`OutputGate::cap`], [`DEFAULT_HELD_CAP`]): a backup far behind
//! must not make the primary buffer the guest's output without bound. The gate itself never
//! drops a byte the guest wrote; it tells its caller whether a write fits
//! ([`OutputGate::has_room`]), and the caller (the VMM's console) makes the guest's output
//! path wait for acknowledgements, as a slow serial line would, until a deadline after which
//! the backup counts as lost (see `vmm/src/ft/console.rs`).
//!
//! No I/O and no clocks: callers pass `now_ns` (any monotonic clock) so the delay
//! statistics mean something and tests are deterministic.

use std::collections::VecDeque;

/// Bytes the guest wrote to its console at exit `ordinal`, at byte `offset` of the console
/// stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Console stream offset of the first byte.
    pub offset: u64,
    /// The bytes to write to the console, in order.
    pub bytes: Vec<u8>,
}

/// Held output allowed by default before the guest's output waits: 16 MiB, the size of the
/// default log buffer.
pub const DEFAULT_HELD_CAP: u64 = 16 << 20;

/// Upper bounds (inclusive, nanoseconds) of the output delay histogram's buckets; a last,
/// unbounded bucket follows. From "released at once" to "waited seconds".
pub const DELAY_BOUNDS_NS: [u64; 12] = [
    0,
    100_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// What the gate has done so far. A *chunk* is the bytes of one [`OutputGate::hold`] call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputStats {
    /// Bytes currently held.
    pub bytes_held: u64,
    /// Bytes released so far (at once or after an ack).
    pub bytes_released: u64,
    /// [`Released`] values handed out (what the VMM writes, each one write).
    pub releases: u64,
    /// Sum over released chunks of (release time - hold time); 0 for a chunk released at
    /// once.
    pub total_delay_ns: u128,
    /// Longest time one chunk waited for its ack, in nanoseconds.
    pub max_delay_ns: u64,
    /// Chunks released (the denominator for [`OutputStats::mean_delay_ns`]).
    pub chunks_released: u64,
    /// Bytes dropped by [`OutputGate::discard`].
    pub bytes_discarded: u64,
    /// Released chunks by delay: `delay_counts[i]` counts delays at most
    /// `DELAY_BOUNDS_NS[i]` (and above the bucket before); the last counts the rest.
    pub delay_counts: [u64; DELAY_BOUNDS_NS.len() + 1],
}

impl OutputStats {
    /// Mean time a chunk waited for its ack, 0 before any release.
    pub fn mean_delay_ns(&self) -> u64 {
        if self.chunks_released == 0 {
            return 0;
        }
        u64::try_from(self.total_delay_ns / u128::from(self.chunks_released)).unwrap_or(u64::MAX)
    }

    /// One chunk released after waiting `delay_ns`.
    fn count_release(&mut self, delay_ns: u64) {
        self.total_delay_ns += u128::from(delay_ns);
        self.max_delay_ns = self.max_delay_ns.max(delay_ns);
        self.chunks_released += 1;
        let bucket = DELAY_BOUNDS_NS.partition_point(|&bound| bound < delay_ns);
        self.delay_counts[bucket] += 1;
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
    /// Bytes that may be held before [`OutputGate::has_room`] says no.
    cap: u64,
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
            cap: DEFAULT_HELD_CAP,
        }
    }

    /// Hold at most `cap` bytes (see [`OutputGate::has_room`]).
    pub fn with_cap(mut self, cap: u64) -> Self {
        self.cap = cap;
        self
    }

    /// Bytes that may be held before [`OutputGate::has_room`] says no.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Whether `len` more bytes keep the held output within the cap. Always true when
    /// they would leave at once (alone, or nothing held) - so a single write larger than
    /// the cap is still taken once everything before it has left. [`OutputGate::hold`]
    /// takes bytes whatever this says: waiting (or giving up on the peer) is the caller's
    /// decision, and the guest's bytes are never dropped here.
    pub fn has_room(&self, len: u64) -> bool {
        self.alone || self.chunks.is_empty() || self.held_bytes().saturating_add(len) <= self.cap
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
            self.stats.count_release(0);
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
            self.stats
                .count_release(now_ns.saturating_sub(c.held_at_ns));
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

    /// Whether the gate releases at once, having no backup to wait for.
    pub fn is_alone(&self) -> bool {
        self.alone
    }

    /// The highest exit ordinal the peer has acknowledged (0 before any ack).
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

    /// A copy of the held bytes, oldest first (the first at
    /// [`OutputGate::released_offset`]).
    pub fn held(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }

    /// Bytes held, waiting for an ack.
    pub fn held_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// What the gate has done so far.
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
mod tests;
