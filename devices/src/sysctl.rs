//! ftvm's system controller: a 4 KiB MMIO page that identifies the machine and lets a
//! guest power off with an exit status (what the tiny test guests and the stock guest's
//! init use to end a run).
//!
//! Registers (32-bit little endian):
//!
//! | offset | register                                                    |
//! | ------ | ----------------------------------------------------------- |
//! | 0x0    | magic 0x4654564d ("MVTF" in memory), read-only              |
//! | 0x4    | version (1), read-only                                      |
//! | 0x8    | guest memory size in MiB, read-only                         |
//! | 0xc    | scratch, read/write                                         |
//! | 0x10   | power-off: a 32-bit write ends the VM with that exit status |
//!
//! Other offsets read as all-ones. Reads of 1, 2 or 4 bytes return the matching bytes of
//! the register they fall in. Writes of 1 or 2 bytes update those bytes of the scratch
//! register; the power-off register takes only a whole 32-bit write (a partial exit status
//! means nothing). 8-byte accesses and unaligned ones crossing a register read as all-ones
//! and are ignored on write, as on a 32-bit device bus.

use serde::{Deserialize, Serialize};

use crate::{BusDevice, StateError};

/// Value of the magic register (bytes "MVTF" in memory).
pub const MAGIC: u32 = 0x4654_564d;
/// Value of the version register.
pub const VERSION: u32 = 1;
const REG_MAGIC: u64 = 0x0;
const REG_VERSION: u64 = 0x4;
const REG_MEM_MIB: u64 = 0x8;
const REG_SCRATCH: u64 = 0xc;
const REG_POWEROFF: u64 = 0x10;

/// Saved state of [`SysCtl`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SysCtlState {
    /// Guest memory size in MiB, as the memory-size register shows it.
    pub mem_mib: u32,
    /// The scratch register.
    pub scratch: u32,
    /// Exit status of a power-off not yet taken by [`SysCtl::take_poweroff`].
    pub poweroff: Option<u32>,
}

/// The system controller, registered over its 4 KiB MMIO page.
#[derive(Debug)]
pub struct SysCtl {
    mem_mib: u32,
    scratch: u32,
    poweroff: Option<u32>,
}

impl SysCtl {
    /// A controller reporting `mem_mib` MiB of guest memory.
    pub fn new(mem_mib: u32) -> Self {
        Self {
            mem_mib,
            scratch: 0,
            poweroff: None,
        }
    }

    /// Saves the state.
    pub fn state(&self) -> SysCtlState {
        SysCtlState {
            mem_mib: self.mem_mib,
            scratch: self.scratch,
            poweroff: self.poweroff,
        }
    }

    /// Restores a saved state, refusing a memory size of zero.
    pub fn from_state(state: SysCtlState) -> Result<Self, StateError> {
        // No machine runs without memory: a zero is a corrupt state.
        if state.mem_mib == 0 {
            return Err(StateError::new("system controller", "mem_mib is zero"));
        }
        Ok(Self {
            mem_mib: state.mem_mib,
            scratch: state.scratch,
            poweroff: state.poweroff,
        })
    }

    /// The exit status of a power-off the guest asked for, reported once.
    pub fn take_poweroff(&mut self) -> Option<u32> {
        self.poweroff.take()
    }

    fn register(&self, reg: u64) -> Option<u32> {
        match reg {
            REG_MAGIC => Some(MAGIC),
            REG_VERSION => Some(VERSION),
            REG_MEM_MIB => Some(self.mem_mib),
            REG_SCRATCH => Some(self.scratch),
            REG_POWEROFF => Some(0),
            _ => None,
        }
    }
}

/// The register an access falls in and the byte offset within it, if it stays inside.
fn split(offset: u64, len: usize) -> Option<(u64, usize)> {
    let within = (offset % 4) as usize;
    (matches!(len, 1 | 2 | 4) && within + len <= 4).then_some((offset - within as u64, within))
}

impl BusDevice for SysCtl {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match split(offset, data.len()).and_then(|(reg, at)| Some((self.register(reg)?, at))) {
            Some((value, at)) => {
                let len = data.len();
                data.copy_from_slice(&value.to_le_bytes()[at..at + len]);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some((reg, at)) = split(offset, data.len()) else {
            return;
        };
        let Some(old) = self.register(reg) else {
            return;
        };
        let mut bytes = old.to_le_bytes();
        bytes[at..at + data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(bytes);
        match reg {
            REG_SCRATCH => self.scratch = value,
            REG_POWEROFF if data.len() == 4 => self.poweroff = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(s: &mut SysCtl, off: u64) -> u32 {
        let mut b = [0; 4];
        s.read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identifies_the_machine() {
        let mut s = SysCtl::new(64);
        assert_eq!(read32(&mut s, 0), MAGIC);
        assert_eq!(read32(&mut s, 4), VERSION);
        assert_eq!(read32(&mut s, 8), 64);
        let mut b = [0u8; 1];
        s.read(0, 1, &mut b);
        assert_eq!(b[0], 0x56);
        assert_eq!(read32(&mut s, 0x100), 0xffff_ffff);
        let mut b = [0u8; 8];
        s.read(0, 0, &mut b);
        assert_eq!(b, [0xff; 8]);
    }

    #[test]
    fn scratch_and_poweroff() {
        let mut s = SysCtl::new(64);
        s.write(0, 0xc, &0x1234_abcdu32.to_le_bytes());
        assert_eq!(read32(&mut s, 0xc), 0x1234_abcd);
        s.write(0, 0xd, &[0xff]);
        assert_eq!(read32(&mut s, 0xc), 0x1234_ffcd);
        assert_eq!(s.take_poweroff(), None);
        s.write(0, 0x10, &7u32.to_le_bytes());
        assert_eq!(s.take_poweroff(), Some(7));
        assert_eq!(s.take_poweroff(), None);
        s.write(0, 0, &0u32.to_le_bytes());
        assert_eq!(read32(&mut s, 0), MAGIC, "read-only");
        assert_eq!(read32(&mut s, 0x10), 0, "power-off reads as zero");
    }

    #[test]
    fn poweroff_takes_only_a_whole_32_bit_write() {
        let mut s = SysCtl::new(64);
        s.write(0, 0x10, &[3]);
        s.write(0, 0x12, &[0, 1]);
        s.write(0, 0x10, &3u64.to_le_bytes());
        assert_eq!(s.take_poweroff(), None);
        s.write(0, 0x10, &0xdead_beefu32.to_le_bytes());
        assert_eq!(s.take_poweroff(), Some(0xdead_beef));
    }

    #[test]
    fn narrow_wide_and_unaligned_accesses() {
        let mut s = SysCtl::new(0x1234);
        let mut w = [0u8; 2];
        s.read(0, 2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x4654);
        s.read(0, 8, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1234);
        s.read(0, 3, &mut w);
        assert_eq!(w, [0xff; 2], "crosses two registers");
        let mut b = [0u8; 4];
        s.read(0, 0x14, &mut b);
        assert_eq!(b, [0xff; 4]);
        s.read(0, 0xffc, &mut b);
        assert_eq!(b, [0xff; 4]);
        s.read(0, u64::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut q = [0u8; 8];
        s.read(0, 8, &mut q);
        assert_eq!(q, [0xff; 8]);
        s.write(0, 0xc, &u64::MAX.to_le_bytes());
        assert_eq!(read32(&mut s, 0xc), 0, "8-byte write ignored");
        s.write(0, 0xe, &[0x34, 0x12]);
        assert_eq!(read32(&mut s, 0xc), 0x1234_0000);
        let mut none: [u8; 0] = [];
        s.read(0, 0, &mut none);
        s.write(0, 0xc, &none);
        s.write(0, 0xd, &[1, 2, 3]);
        assert_eq!(read32(&mut s, 0xc), 0x1234_0000);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let mut s = SysCtl::new(64);
        s.write(0, 0xc, &5u32.to_le_bytes());
        s.write(0, 0x10, &9u32.to_le_bytes());
        let json = serde_json::to_string(&s.state()).unwrap();
        let mut r = SysCtl::from_state(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(r.state(), s.state());
        assert_eq!(read32(&mut r, 0xc), 5);
        assert_eq!(read32(&mut r, 8), 64);
        assert_eq!(r.take_poweroff(), Some(9), "a pending power-off survives");
        let mut bad = s.state();
        bad.mem_mib = 0;
        let err = SysCtl::from_state(bad).unwrap_err();
        assert!(err.reason.contains("mem_mib"), "{err}");
    }

    #[test]
    fn survives_random_access() {
        let mut s = SysCtl::new(64);
        crate::testing::hammer(&mut s, &[0], 0x1000, None);
        let _ = s.take_poweroff();
        assert!(SysCtl::from_state(s.state()).is_ok());
    }
}
