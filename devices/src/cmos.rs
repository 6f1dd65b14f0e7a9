//! The MC146818 real-time clock and CMOS NVRAM (index port 0x70, data port 0x71).
//!
//! The date is `base_unix_secs` plus the injected clock, so guest wall-clock time is an
//! input like any other. The periodic, alarm and update interrupts are not generated (no
//! interrupt line): their enable bits are stored, and register C reports no event. Linux
//! and the test guests only read the time.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, Clock, StateError};

pub const CMOS_BASE: u64 = 0x70;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// Register B flags.
const B_24H: u8 = 0x02;
const B_BINARY: u8 = 0x04;
const B_SET: u8 = 0x80;
/// The update-in-progress bit is set for the last 244 us of each second.
const UIP_NS: u64 = 244_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CmosState {
    pub index: u8,
    pub nmi_disabled: bool,
    /// The 128 bytes of CMOS RAM (the time registers in it are recomputed on read).
    pub ram: Vec<u8>,
    pub base_unix_secs: u64,
}

pub struct Cmos {
    index: u8,
    nmi_disabled: bool,
    ram: [u8; 128],
    base_unix_secs: u64,
    clock: Arc<dyn Clock>,
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

impl Cmos {
    /// A CMOS with the date at `base_unix_secs` and the memory-size registers a BIOS
    /// fills in for `mem_bytes` of RAM.
    pub fn new(clock: Arc<dyn Clock>, base_unix_secs: u64, mem_bytes: u64) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        ram[REG_B] = B_24H;
        ram[REG_D] = 0x80; // battery good
        let kib = |b: u64| (b / 1024).min(0xffff) as u16;
        let [lo, hi] = 640u16.to_le_bytes();
        ram[0x15] = lo;
        ram[0x16] = hi;
        let ext = kib(mem_bytes.saturating_sub(1 << 20).min(0xffff * 1024)).to_le_bytes();
        ram[0x17] = ext[0];
        ram[0x18] = ext[1];
        ram[0x30] = ext[0];
        ram[0x31] = ext[1];
        let above_16m = mem_bytes.min(0xc000_0000).saturating_sub(16 << 20) / (64 * 1024);
        let [lo, hi] = (above_16m.min(0xffff) as u16).to_le_bytes();
        ram[0x34] = lo;
        ram[0x35] = hi;
        let above_4g = mem_bytes.saturating_sub(0xc000_0000) / (64 * 1024);
        ram[0x5b] = above_4g as u8;
        ram[0x5c] = (above_4g >> 8) as u8;
        ram[0x5d] = (above_4g >> 16) as u8;
        Self {
            index: 0,
            nmi_disabled: false,
            ram,
            base_unix_secs,
            clock,
        }
    }

    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nmi_disabled: self.nmi_disabled,
            ram: self.ram.to_vec(),
            base_unix_secs: self.base_unix_secs,
        }
    }

    pub fn from_state(state: CmosState, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        let ram: [u8; 128] = state.ram.as_slice().try_into().map_err(|_| {
            StateError::new("CMOS", format!("{} bytes of RAM, not 128", state.ram.len()))
        })?;
        if state.index > 0x7f {
            return Err(StateError::new("CMOS", format!("index {:#x}", state.index)));
        }
        Ok(Self {
            index: state.index,
            nmi_disabled: state.nmi_disabled,
            ram,
            base_unix_secs: state.base_unix_secs,
            clock,
        })
    }

    /// A time register as the guest reads it, in the format register B asks for.
    fn time_register(&self, reg: usize) -> Option<u8> {
        let now_ns = self.clock.now_ns();
        let secs = self.base_unix_secs.saturating_add(now_ns / 1_000_000_000);
        let days = (secs / 86_400) as i64;
        let tod = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        let b = self.ram[REG_B];
        let hour = (tod / 3600) as u8;
        let value = match reg {
            0x00 => (tod % 60) as u8,
            0x02 => ((tod / 60) % 60) as u8,
            0x04 if b & B_24H == 0 => {
                // 12-hour mode: 1..12 with bit 7 for PM (applied after BCD conversion).
                let h12 = match hour % 12 {
                    0 => 12,
                    h => h,
                };
                let v = if b & B_BINARY != 0 { h12 } else { to_bcd(h12) };
                return Some(v | if hour >= 12 { 0x80 } else { 0 });
            }
            0x04 => hour,
            0x06 => ((days + 4).rem_euclid(7) + 1) as u8, // 1 = Sunday
            0x07 => day as u8,
            0x08 => month as u8,
            0x09 => year.rem_euclid(100) as u8,
            0x32 => (year / 100).clamp(0, 99) as u8,
            _ => return None,
        };
        Some(if b & B_BINARY != 0 {
            value
        } else {
            to_bcd(value)
        })
    }

    fn read_register(&mut self, reg: usize) -> u8 {
        match reg {
            REG_A => {
                let in_update = self.ram[REG_B] & B_SET == 0
                    && self.clock.now_ns() % 1_000_000_000 >= 1_000_000_000 - UIP_NS;
                (self.ram[REG_A] & 0x7f) | if in_update { 0x80 } else { 0 }
            }
            REG_C => std::mem::take(&mut self.ram[REG_C]),
            _ => self.time_register(reg).unwrap_or(self.ram[reg]),
        }
    }

    fn write_register(&mut self, reg: usize, value: u8) {
        match reg {
            REG_A => self.ram[REG_A] = value & 0x7f,
            REG_C | REG_D => {} // read-only
            // Setting the time moves the base so the guest reads back what it wrote
            // (to the second); writes of single fields are stored as plain RAM.
            _ => self.ram[reg] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            0 => 0xff, // the index register is write-only
            _ => self.read_register(usize::from(self.index)),
        };
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            0 => {
                self.nmi_disabled = value & 0x80 != 0;
                self.index = value & 0x7f;
            }
            _ => self.write_register(usize::from(self.index), *value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeClock;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(CMOS_BASE, 0, &[reg]);
        let mut b = [0];
        c.read(CMOS_BASE, 1, &mut b);
        b[0]
    }

    fn write(c: &mut Cmos, reg: u8, v: u8) {
        c.write(CMOS_BASE, 0, &[reg]);
        c.write(CMOS_BASE, 1, &[v]);
    }

    // 2026-01-01T00:00:00Z, a Thursday.
    const EPOCH: u64 = 1_767_225_600;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days((EPOCH / 86_400) as i64), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn bcd_date_and_time_follow_the_clock() {
        let clock = FakeClock::new();
        let mut c = Cmos::new(clock.clone(), EPOCH, 64 << 20);
        assert_eq!(
            (read(&mut c, 9), read(&mut c, 8), read(&mut c, 7)),
            (0x26, 0x01, 0x01)
        );
        assert_eq!(read(&mut c, 0x32), 0x20);
        assert_eq!(read(&mut c, 6), 5, "Thursday");
        clock.set((13 * 3600 + 45 * 60 + 30) * 1_000_000_000);
        assert_eq!(
            (read(&mut c, 4), read(&mut c, 2), read(&mut c, 0)),
            (0x13, 0x45, 0x30)
        );
        write(&mut c, 0x0b, B_BINARY); // binary, 12-hour
        assert_eq!(read(&mut c, 4), 0x80 | 1, "1 PM");
        assert_eq!(read(&mut c, 2), 45);
    }

    #[test]
    fn update_in_progress_near_the_end_of_a_second() {
        let clock = FakeClock::new();
        let mut c = Cmos::new(clock.clone(), EPOCH, 64 << 20);
        clock.set(500_000_000);
        assert_eq!(read(&mut c, 0x0a) & 0x80, 0);
        clock.set(999_900_000);
        assert_eq!(read(&mut c, 0x0a) & 0x80, 0x80);
        assert_eq!(read(&mut c, 0x0d), 0x80);
    }

    #[test]
    fn memory_size_registers_and_nvram() {
        let clock = FakeClock::new();
        let mut c = Cmos::new(clock, EPOCH, 64 << 20);
        assert_eq!(
            u16::from_le_bytes([read(&mut c, 0x30), read(&mut c, 0x31)]),
            63 * 1024
        );
        assert_eq!(
            u16::from_le_bytes([read(&mut c, 0x34), read(&mut c, 0x35)]),
            48 * 16
        );
        write(&mut c, 0x40, 0x5a);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        write(&mut c, 0x0d, 0);
        assert_eq!(read(&mut c, 0x0d), 0x80, "register D is read-only");
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let clock = FakeClock::new();
        let mut c = Cmos::new(clock.clone(), EPOCH, 64 << 20);
        write(&mut c, 0x50, 7);
        let json = serde_json::to_string(&c.state()).unwrap();
        let mut r = Cmos::from_state(serde_json::from_str(&json).unwrap(), clock.clone()).unwrap();
        assert_eq!(read(&mut r, 0x50), 7);
        assert_eq!(read(&mut r, 9), 0x26);
        let mut bad = c.state();
        bad.ram.truncate(100);
        assert!(Cmos::from_state(bad, clock.clone()).is_err());
        let mut bad = c.state();
        bad.index = 0x80;
        assert!(Cmos::from_state(bad, clock).is_err());
    }

    #[test]
    fn survives_random_access() {
        let clock = FakeClock::new();
        clock.set(u64::MAX / 2);
        let mut c = Cmos::new(clock, u64::MAX / 4, u64::MAX);
        crate::testing::hammer(&mut c, &[CMOS_BASE], 2, None);
    }
}
