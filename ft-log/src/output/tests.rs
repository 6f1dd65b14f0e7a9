//! The output gate's unit tests (beside it, in their own file for length).

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
        let check = |g: &OutputGate, r: &Released, out: &mut Vec<u8>, produced: &[(u64, u8)]| {
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

#[test]
fn the_cap_says_when_more_output_must_wait() {
    let mut g = OutputGate::new(0).with_cap(4);
    assert_eq!(g.cap(), 4);
    // Nothing held: any write fits, even one above the cap (it would wait forever else).
    assert!(g.has_room(10));
    assert_eq!(g.hold(1, b"abc", 0), None);
    assert!(g.has_room(1));
    assert!(!g.has_room(2));
    // The gate never drops the guest's bytes: holding past the cap is the caller's call.
    assert_eq!(g.hold(2, b"de", 0), None);
    assert_eq!(g.held_bytes(), 5);
    assert!(!g.has_room(1));
    // An ack makes room.
    assert_eq!(g.ack(1, 5), vec![rel(0, b"abc")]);
    assert!(g.has_room(2));
    assert!(!g.has_room(3));
    // Alone, everything leaves at once: always room.
    g.set_alone(true, 6);
    assert!(g.has_room(u64::MAX));
    assert_eq!(OutputGate::new(0).cap(), DEFAULT_HELD_CAP);
}

#[test]
fn delays_are_counted_in_their_buckets() {
    let mut g = OutputGate::new(0);
    g.hold(1, b"a", 0);
    g.hold(2, b"b", 1_000);
    g.hold(3, b"c", 0);
    g.ack(1, 100_000); // 100 us: the bucket bounded by 100 us
    g.ack(2, 3_000_000); // 2.999 ms: bounded by 5 ms
    g.ack(3, 20_000_000_000); // 20 s: the unbounded bucket
    g.set_alone(true, 0);
    g.hold(4, b"d", 0); // at once: delay 0
    let s = g.stats();
    let mut want = [0u64; DELAY_BOUNDS_NS.len() + 1];
    want[0] = 1;
    want[1] = 1;
    want[5] = 1;
    want[DELAY_BOUNDS_NS.len()] = 1;
    assert_eq!(s.delay_counts, want);
    assert_eq!(s.delay_counts.iter().sum::<u64>(), s.chunks_released);
}
