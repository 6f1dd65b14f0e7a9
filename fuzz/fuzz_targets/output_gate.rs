//! The output gate (`ft_log::OutputGate`) driven by a random sequence of hold, ack,
//! set_alone, rebase and discard, checked against a model after every step.
//!
//! The invariants are the output rule's (ft-log/src/output.rs and its randomized unit
//! test): what leaves is contiguous with what left before, in the order produced, each
//! byte once, and never above the ack unless the gate is alone; the offsets, held counts
//! and statistics agree with the model. Ordinals, acks and offsets come from the input
//! unrestricted, as they can from a forged peer or checkpoint.

#![no_main]

use std::collections::VecDeque;

use ft_log::{OutputGate, Released};
use ftvm_fuzz::Ops;
use libfuzzer_sys::fuzz_target;

/// What the gate should hold and where its console stream is.
struct Model {
    /// Offset of the oldest held byte (= of the next byte to leave).
    next: u64,
    /// Held bytes with the ordinal of the exit that produced each.
    held: VecDeque<(u64, u8)>,
    released: u64,
    discarded: u64,
}

impl Model {
    fn check_release(&mut self, g: &OutputGate, r: &Released) {
        assert!(!r.bytes.is_empty(), "empty release");
        assert_eq!(r.offset, self.next, "gap or overlap in the console stream");
        assert!(
            r.bytes.len() <= self.held.len(),
            "released more than was held"
        );
        for &b in &r.bytes {
            let (ordinal, want) = self.held.pop_front().unwrap_or_default();
            assert_eq!(b, want, "released out of order");
            assert!(
                g.is_alone() || ordinal <= g.acked(),
                "ordinal {ordinal} released above ack {}",
                g.acked()
            );
        }
        self.next = self.next.saturating_add(r.bytes.len() as u64);
        self.released += r.bytes.len() as u64;
    }

    fn check_state(&self, g: &OutputGate) {
        assert_eq!(g.released_offset(), self.next);
        assert_eq!(g.held_bytes(), self.held.len() as u64);
        assert_eq!(g.offset(), self.next.saturating_add(self.held.len() as u64));
        let s = g.stats();
        assert_eq!(s.bytes_held, g.held_bytes());
        assert_eq!(s.bytes_released, self.released);
        assert_eq!(s.bytes_discarded, self.discarded);
        // The gate's own invariant: nothing waits that could leave.
        if let Some(&(ordinal, _)) = self.held.front() {
            assert!(!g.is_alone(), "alone with bytes held");
            assert!(ordinal > g.acked(), "held byte at acked ordinal {ordinal}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let start = ops.u64();
    let mut g = OutputGate::new(start);
    let mut m = Model {
        next: start,
        held: VecDeque::new(),
        released: 0,
        discarded: 0,
    };
    let mut ordinal = 0u64;
    let mut now = 0u64;
    while !ops.is_empty() {
        let op = ops.u8();
        now = now.saturating_add(u64::from(op >> 4) * 1000);
        match op % 8 {
            // Output at the current exit or a later one (the usual case)...
            0..=2 => {
                ordinal = ordinal.saturating_add(u64::from(op >> 6));
                let n = usize::from(ops.u8() % 16);
                let bytes = ops.bytes(n);
                let before = m.held.len();
                m.held.extend(bytes.iter().map(|&b| (ordinal, b)));
                if let Some(r) = g.hold(ordinal, bytes, now) {
                    // Released at once: only when nothing was waiting ahead of it.
                    assert_eq!(before, 0, "output overtook held output");
                    m.check_release(&g, &r);
                }
            }
            // ... or at any ordinal at all (a caller bug or a wild value).
            3 => {
                let o = ops.u64();
                let bytes = ops.bytes(usize::from(op >> 5));
                let before = m.held.len();
                m.held.extend(bytes.iter().map(|&b| (o, b)));
                if let Some(r) = g.hold(o, bytes, now) {
                    assert_eq!(before, 0, "output overtook held output");
                    m.check_release(&g, &r);
                }
            }
            4 | 5 => {
                // Acks near the current ordinal, or any value (stale, from the future).
                let a = if op & 0x80 == 0 {
                    ordinal.saturating_sub(u64::from(op >> 5 & 3))
                } else {
                    ops.u64()
                };
                let acked = g.acked();
                let rs = g.ack(a, now);
                assert!(rs.len() <= 1, "release not merged");
                for r in &rs {
                    m.check_release(&g, r);
                }
                assert_eq!(g.acked(), acked.max(a), "ack went backwards");
            }
            6 => {
                let alone = op & 0x10 != 0;
                let rs = g.set_alone(alone, now);
                assert!(rs.len() <= 1, "release not merged");
                if !alone {
                    assert!(rs.is_empty(), "released on leaving alone mode");
                }
                for r in &rs {
                    m.check_release(&g, r);
                }
                assert_eq!(g.is_alone(), alone);
            }
            _ => {
                if op & 0x10 != 0 {
                    let offset = ops.u64();
                    assert_eq!(g.rebase(offset), m.held.len() as u64);
                    m.next = offset;
                } else {
                    assert_eq!(g.discard(), m.held.len() as u64);
                    m.next = m.next.saturating_add(m.held.len() as u64);
                }
                m.discarded = m.discarded.saturating_add(m.held.len() as u64);
                m.held.clear();
            }
        }
        m.check_state(&g);
    }
});
