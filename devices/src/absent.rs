//! Legacy PC port ranges with nothing behind them (second serial ports, parallel ports,
//! VGA, floppy, DMA controllers, POST codes, PCI configuration).
//!
//! A PC operating system probes these; on real hardware an empty ISA bus reads all ones and
//! ignores writes, which is how the OS learns the device is absent. Registering them
//! explicitly keeps the VMM's rule that any *other* unknown port stops the VM.

use serde::{Deserialize, Serialize};

use crate::{BusDevice, StateError};

/// The port ranges (base, length) a Linux boot on a PC is known to probe.
pub const ABSENT_PORT_RANGES: &[(u64, u64)] = &[
    (0x00, 0x20),  // DMA controller 1
    (0x80, 0x10),  // POST code / io-delay port 0x80, DMA page registers
    (0xc0, 0x20),  // DMA controller 2
    (0xed, 0x01),  // alternative io-delay port
    (0xf0, 0x10),  // math coprocessor
    (0x170, 0x08), // secondary IDE
    (0x1f0, 0x08), // primary IDE
    (0x278, 0x08), // LPT2
    (0x2e8, 0x08), // COM4
    (0x2f8, 0x08), // COM2
    (0x378, 0x08), // LPT1
    (0x3b0, 0x30), // MDA/VGA
    (0x3e8, 0x08), // COM3
    (0x3f0, 0x08), // floppy controller
];

/// PCI configuration mechanism #1 (0xcf8..0xd00): absent too on a machine without a PCI
/// bus, where the VMM registers [`AbsentPorts`] there as well; a PCI bus takes it otherwise.
pub const PCI_CONFIG_PORTS: (u64, u64) = (0xcf8, 0x08);

/// Saved state of [`AbsentPorts`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AbsentPortsState {
    /// Reads and writes seen so far (a statistic, saturating at `u64::MAX`).
    pub accesses: u64,
}

/// Reads all ones, ignores writes, counts accesses.
#[derive(Debug, Default)]
pub struct AbsentPorts {
    accesses: u64,
}

impl AbsentPorts {
    /// Absent ports that have seen no access yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and writes seen so far, saturating at `u64::MAX`.
    pub fn accesses(&self) -> u64 {
        self.accesses
    }

    /// Saves the state.
    pub fn state(&self) -> AbsentPortsState {
        AbsentPortsState {
            accesses: self.accesses,
        }
    }

    /// Restores a saved state (any access count is valid).
    pub fn from_state(state: AbsentPortsState) -> Result<Self, StateError> {
        Ok(Self {
            accesses: state.accesses,
        })
    }
}

impl BusDevice for AbsentPorts {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Saturating: a restored count can be anything, and a statistic must not panic.
        self.accesses = self.accesses.saturating_add(1);
        data.fill(0xff);
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {
        self.accesses = self.accesses.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_ones_and_counts() {
        let mut d = AbsentPorts::new();
        let mut b = [0u8; 4];
        d.read(0x2f8, 5, &mut b);
        d.write(0x80, 0, &[1]);
        assert_eq!(b, [0xff; 4]);
        assert_eq!(d.accesses(), 2);
        let r = AbsentPorts::from_state(d.state()).unwrap();
        assert_eq!(r.accesses(), 2);
    }

    /// The device_states fuzz target's input: a saved count at the top of the range (the
    /// state comes from a file or the network) overflowed on the next access, a panic in
    /// debug builds.
    #[test]
    fn a_restored_count_at_the_limit_saturates() {
        let state = AbsentPortsState { accesses: u64::MAX };
        let mut d = AbsentPorts::from_state(state).unwrap();
        let mut b = [0u8; 1];
        d.read(0x2f8, 0, &mut b);
        d.write(0x2f8, 0, &b);
        assert_eq!(d.accesses(), u64::MAX);
    }

    #[test]
    fn ranges_do_not_overlap_each_other() {
        let mut sorted = ABSENT_PORT_RANGES.to_vec();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:x?}");
        }
    }
}
