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
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Drive a device with 20,000 seeded pseudo-random accesses (offsets within `span` of
/// each base, widths 1/2/4/8, any values): it must never panic.
pub fn hammer(device: &mut dyn BusDevice, bases: &[u64], span: u64) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let r = next();
        let base = bases[(r % bases.len() as u64) as usize];
        let offset = (r >> 8) % (span + 2);
        let width = [1usize, 2, 4, 8][((r >> 20) % 4) as usize];
        let value = next().to_le_bytes();
        if r >> 40 & 1 == 0 {
            device.write(base, offset, &value[..width]);
        } else {
            let mut buf = [0u8; 8];
            device.read(base, offset, &mut buf[..width]);
        }
    }
}
