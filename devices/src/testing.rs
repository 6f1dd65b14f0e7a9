//! Test helpers shared by the device tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{BusDevice, Clock};

/// A clock the test sets by hand.
#[derive(Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::SeqCst);
    }

    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A small deterministic pseudo-random generator (xorshift64), so tests need no crate.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Drive a device with 20,000 seeded pseudo-random accesses (offsets within `span` of
/// each base plus a little beyond, widths 1/2/4/8, any values): it must never panic.
/// With a clock, time also moves forward by random steps (sometimes large ones).
pub fn hammer(device: &mut dyn BusDevice, bases: &[u64], span: u64, clock: Option<&FakeClock>) {
    let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
    for _ in 0..20_000 {
        let r = rng.next_u64();
        let base = bases[(r % bases.len() as u64) as usize];
        let offset = (r >> 8) % (span + 2);
        let width = [1usize, 2, 4, 8][((r >> 20) % 4) as usize];
        let value = rng.next_u64().to_le_bytes();
        if let Some(clock) = clock {
            let step = match (r >> 24) % 8 {
                0 => rng.next_u64() % 10_000_000_000,
                1..=3 => rng.next_u64() % 100_000,
                _ => 0,
            };
            clock.advance(step);
        }
        if (r >> 40) & 1 == 0 {
            device.write(base, offset, &value[..width]);
        } else {
            let mut buf = [0u8; 8];
            device.read(base, offset, &mut buf[..width]);
        }
    }
}
