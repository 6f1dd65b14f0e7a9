//! Routing of port-I/O and MMIO exits to devices by address range.
//!
//! The exit handler never knows a port number: it asks the bus, and the bus finds the one
//! device whose range holds the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ftvm_devices::BusDevice;

/// A device shared between the bus and the code that built the machine (which keeps a
/// typed handle to poll timers or take reset requests).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be added to a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range has zero length or runs past the end of the address space.
    #[error("range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// First address of the requested range.
        base: u64,
        /// Length of the requested range, in bytes (or ports).
        len: u64,
    },
    /// The range overlaps one already on the bus.
    #[error("range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// First address of the requested range.
        base: u64,
        /// Length of the requested range, in bytes (or ports).
        len: u64,
        /// First address of the existing range it overlaps.
        other: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each routed to one device.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus, with no devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Route the `len` addresses starting at `base` to `device`; the range must be non-empty
    /// and overlap no range already on the bus.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        // The only ranges that can overlap start below `end`; the nearest of them is enough
        // to check because existing ranges never overlap each other.
        if let Some((&other, entry)) = self.ranges.range(..end).next_back() {
            if other + entry.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr`, with the base of its range.
    fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((base, &entry.device))
    }

    /// Read from the device at `addr`. Returns false when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, device)) => {
                lock(device).read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Write to the device at `addr`. Returns false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((base, device)) => {
                lock(device).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device. A device that panicked while locked has already stopped the vCPU thread;
/// its state is still the last consistent one, so later readers (state save) may use it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill((base + offset) as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        bus.insert(dev.clone(), 0x61, 1).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 0xfa);
        assert!(bus.write(0x61, &[7]));
        assert_eq!(dev.lock().unwrap().last, Some((0x61, 0, vec![7])));
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.write(0x62, &[0]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev.clone(), 0x108, 4),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert!(matches!(
            bus.insert(dev.clone(), 0xf8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(dev.clone(), 0xf0, 0x10).is_ok());
        assert_eq!(
            bus.insert(dev.clone(), u64::MAX, 2),
            Err(BusError::BadRange {
                base: u64::MAX,
                len: 2
            })
        );
        assert!(matches!(
            bus.insert(dev, 0x1000, 0),
            Err(BusError::BadRange { .. })
        ));
    }
}
