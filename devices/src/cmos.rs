//! The MC146818 real-time clock and CMOS NVRAM (index port 0x70, data port 0x71).
//!
//! The date is `base_unix_secs` plus the injected clock (plus whatever offset the guest
//! set by writing the time registers), so guest wall-clock time is an input like any
//! other. The time registers are computed when read, in the format register B asks for
//! (BCD or binary, 12 or 24 hours). While register B's SET bit is on they are frozen in
//! RAM, the guest writes the new time there, and clearing SET makes it the current time.
//!
//! Register C's flags are derived from the clock: UF at every second boundary, AF when the
//! time passes the alarm in registers 1, 3 and 5, PF at the periodic rate of register A.
//! They are brought up to date at every access and at [`Cmos::poll_irq`]; when an enabled
//! flag gets set, IRQF is set and, if the device was given an interrupt line
//! ([`Cmos::with_irq`]), IRQ8 is raised. The divider bits of register A are stored but do
//! not stop the clock (guests only write them while the SET bit holds the time anyway).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, Clock, IrqLine, StateError};

/// The index port (0x70); the data port is the next one. The device takes both.
pub const CMOS_BASE: u64 = 0x70;
const REG_SECONDS: usize = 0x00;
const REG_SECONDS_ALARM: usize = 0x01;
const REG_MINUTES: usize = 0x02;
const REG_MINUTES_ALARM: usize = 0x03;
const REG_HOURS: usize = 0x04;
const REG_HOURS_ALARM: usize = 0x05;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_CENTURY: usize = 0x32;
/// The registers that hold the current time.
const TIME_REGISTERS: [usize; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_WEEKDAY,
    REG_DAY,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];
/// Register A: update in progress.
const A_UIP: u8 = 0x80;
/// Register B flags.
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
/// Register C flags (the interrupt enables of register B line up with PF, AF and UF).
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const C_FLAGS: u8 = C_PF | C_AF | C_UF;
/// Register D: valid RAM and time (the battery is fine).
const D_VRT: u8 = 0x80;
/// The update-in-progress bit is set for the last 244 us of each second.
const UIP_NS: u64 = 244_000;
const NS_PER_SEC: u64 = 1_000_000_000;
const SECS_PER_DAY: u64 = 86_400;
/// 9999-12-31T23:59:59Z: the last second the century register can show.
const MAX_UNIX_SECS: u64 = 253_402_300_799;
/// Alarm register values from 0xc0 up match any value ("don't care").
const ALARM_ANY: u8 = 0xc0;
/// RAM below 4 GiB ends where the machine's 32-bit MMIO hole starts (3 GiB); the rest
/// is mapped above 4 GiB. This is the ftvm memory layout the BIOS registers describe.
const LOW_RAM_END: u64 = 0xc000_0000;

/// Saved state of [`Cmos`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CmosState {
    /// The selected register, 0..=0x7f.
    pub index: u8,
    /// Port 0x70 bit 7.
    pub nmi_disabled: bool,
    /// The 128 bytes of CMOS RAM. The time registers in it only matter while SET is on;
    /// otherwise they are computed from the clock.
    pub ram: Vec<u8>,
    /// Guest wall-clock time at virtual time zero, in seconds since the Unix epoch.
    pub base_unix_secs: u64,
    /// Seconds the guest moved its clock by setting the time.
    pub offset_secs: i64,
    /// Register C's flags are up to date as of this virtual time.
    pub flags_checked_ns: u64,
}

/// The RTC and CMOS RAM, registered at [`CMOS_BASE`] over two ports.
pub struct Cmos {
    index: u8,
    nmi_disabled: bool,
    ram: [u8; 128],
    base_unix_secs: u64,
    offset_secs: i64,
    flags_checked_ns: u64,
    clock: Arc<dyn Clock>,
    irq: Option<IrqLine>,
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's algorithm).
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

/// Days since 1970-01-01 of a (year, month 1..=12, day) date; the inverse of
/// [`civil_from_days`].
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (tens, ones) = (v >> 4, v & 0x0f);
    (tens <= 9 && ones <= 9).then_some(tens * 10 + ones)
}

/// Pulses of the RTC's 32.768 kHz time base by virtual time `ns`.
fn ticks_32k(ns: u64) -> u64 {
    (u128::from(ns) * 32_768 / u128::from(NS_PER_SEC)) as u64
}

/// A broken-down time of day and date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday .. 7 = Saturday.
    weekday: u8,
}

impl DateTime {
    fn from_unix(secs: u64) -> Self {
        let days = (secs / SECS_PER_DAY) as i64;
        let tod = secs % SECS_PER_DAY;
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (tod / 3600) as u8,
            minute: ((tod / 60) % 60) as u8,
            second: (tod % 60) as u8,
            // 1970-01-01 was a Thursday (5).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// Seconds since the epoch, if every field is in range (the weekday is ignored: it
    /// follows from the date).
    fn to_unix(self) -> Option<u64> {
        let valid = (1970..=9999).contains(&self.year)
            && (1..=12).contains(&self.month)
            && (1..=days_in_month(self.year, self.month)).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        if !valid {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = days * SECS_PER_DAY as i64
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        u64::try_from(secs).ok()
    }
}

impl Cmos {
    /// A CMOS with the date at `base_unix_secs` and the memory-size registers a BIOS
    /// fills in for `mem_bytes` of RAM. Without [`Cmos::with_irq`] no IRQ8 is raised.
    pub fn new(clock: Arc<dyn Clock>, base_unix_secs: u64, mem_bytes: u64) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        ram[REG_B] = B_24H; // BCD, 24-hour
        ram[REG_D] = D_VRT;
        fill_memory_size(&mut ram, mem_bytes);
        Self {
            index: 0,
            nmi_disabled: false,
            ram,
            base_unix_secs: base_unix_secs.min(MAX_UNIX_SECS),
            offset_secs: 0,
            flags_checked_ns: 0,
            clock,
            irq: None,
        }
    }

    /// Raise `irq` (IRQ8 on a PC) when an enabled interrupt flag gets set.
    pub fn with_irq(mut self, irq: IrqLine) -> Self {
        self.irq = Some(irq);
        self
    }

    /// Saves the state.
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nmi_disabled: self.nmi_disabled,
            ram: self.ram.to_vec(),
            base_unix_secs: self.base_unix_secs,
            offset_secs: self.offset_secs,
            flags_checked_ns: self.flags_checked_ns,
        }
    }

    /// Restore a saved CMOS (attach the interrupt line again with [`Cmos::with_irq`]).
    pub fn from_state(state: CmosState, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        let err = |reason: String| Err(StateError::new("CMOS", reason));
        let Ok(ram) = <[u8; 128]>::try_from(state.ram.as_slice()) else {
            return err(format!("ram has {} bytes, not 128", state.ram.len()));
        };
        if state.index > 0x7f {
            return err(format!("index {:#x} above 0x7f", state.index));
        }
        if state.base_unix_secs > MAX_UNIX_SECS {
            return err(format!(
                "base_unix_secs {} after 9999",
                state.base_unix_secs
            ));
        }
        if state.offset_secs.unsigned_abs() > MAX_UNIX_SECS {
            return err(format!("offset_secs {} out of range", state.offset_secs));
        }
        if ram[REG_A] & A_UIP != 0 {
            return err("ram register A has the read-only UIP bit".into());
        }
        if ram[REG_C] & !(C_IRQF | C_FLAGS) != 0 {
            return err(format!(
                "ram register C {:#x} has reserved bits",
                ram[REG_C]
            ));
        }
        Ok(Self {
            index: state.index,
            nmi_disabled: state.nmi_disabled,
            ram,
            base_unix_secs: state.base_unix_secs,
            offset_secs: state.offset_secs,
            flags_checked_ns: state.flags_checked_ns,
            clock,
            irq: None,
        })
    }

    /// Whether the guest has masked NMIs (port 0x70 bit 7).
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// Bring register C up to date; true if that raised the interrupt line.
    pub fn poll_irq(&mut self) -> bool {
        let before = self.ram[REG_C] & C_IRQF;
        self.update_flags(self.clock.now_ns());
        before == 0 && self.ram[REG_C] & C_IRQF != 0 && self.irq.is_some()
    }

    /// When [`Cmos::poll_irq`] may next raise the line (virtual ns): the next second
    /// boundary for the update and alarm interrupts (the alarm is checked at each one),
    /// the next periodic tick for the periodic interrupt. None when no interrupt is enabled
    /// or the last one has not been acknowledged by reading register C.
    pub fn next_irq_deadline_ns(&self) -> Option<u64> {
        if self.irq.is_none() || self.ram[REG_C] & C_IRQF != 0 {
            return None;
        }
        let b = self.ram[REG_B];
        let last = self.flags_checked_ns;
        let mut deadline: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(period) = self.periodic_period() {
                let next = (ticks_32k(last) / period).saturating_add(1);
                let ns = (u128::from(next) * u128::from(period) * u128::from(NS_PER_SEC))
                    .div_ceil(32_768);
                deadline = Some(u64::try_from(ns).unwrap_or(u64::MAX));
            }
        }
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            let next = (last / NS_PER_SEC)
                .saturating_add(1)
                .saturating_mul(NS_PER_SEC);
            deadline = Some(deadline.map_or(next, |d| d.min(next)));
        }
        deadline
    }

    /// The guest's wall-clock time at virtual time `now_ns`.
    fn unix_secs(&self, now_ns: u64) -> u64 {
        let secs = i128::from(self.base_unix_secs)
            + i128::from(now_ns / NS_PER_SEC)
            + i128::from(self.offset_secs);
        secs.clamp(0, i128::from(MAX_UNIX_SECS)) as u64
    }

    /// Make `target` the wall-clock time at `now_ns`.
    fn set_time(&mut self, target: u64, now_ns: u64) {
        let offset =
            i128::from(target) - i128::from(self.base_unix_secs) - i128::from(now_ns / NS_PER_SEC);
        let limit = i128::from(MAX_UNIX_SECS);
        self.offset_secs = offset.clamp(-limit, limit) as i64;
    }

    fn binary(&self) -> bool {
        self.ram[REG_B] & B_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.binary() {
            Some(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram[REG_B] & B_24H != 0 {
            return self.encode(hour);
        }
        // 12-hour mode: 1..=12, bit 7 for PM (applied after the BCD conversion).
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> Option<u8> {
        if self.ram[REG_B] & B_24H != 0 {
            return self.decode(v);
        }
        let h12 = self.decode(v & 0x7f)?;
        if !(1..=12).contains(&h12) {
            return None;
        }
        Some(h12 % 12 + if v & 0x80 != 0 { 12 } else { 0 })
    }

    /// The time registers for `t`, in the current format.
    fn encode_time(&self, t: &DateTime) -> [(usize, u8); 8] {
        // Years are 1970..=9999, so both halves fit a byte.
        let (century, year) = ((t.year / 100) as u8, (t.year % 100) as u8);
        [
            (REG_SECONDS, self.encode(t.second)),
            (REG_MINUTES, self.encode(t.minute)),
            (REG_HOURS, self.encode_hour(t.hour)),
            (REG_WEEKDAY, self.encode(t.weekday)),
            (REG_DAY, self.encode(t.day as u8)),
            (REG_MONTH, self.encode(t.month as u8)),
            (REG_YEAR, self.encode(year)),
            (REG_CENTURY, self.encode(century)),
        ]
    }

    /// Copy the current time into the time registers of RAM.
    fn freeze_time(&mut self, now_ns: u64) {
        let t = DateTime::from_unix(self.unix_secs(now_ns));
        for (reg, value) in self.encode_time(&t) {
            self.ram[reg] = value;
        }
    }

    /// The time the time registers in RAM hold, if they hold a valid one.
    fn frozen_time(&self) -> Option<u64> {
        let field = |reg: usize| self.decode(self.ram[reg]);
        let century = field(REG_CENTURY)?;
        let year = field(REG_YEAR)?;
        if year > 99 || century > 99 {
            return None;
        }
        DateTime {
            year: i64::from(century) * 100 + i64::from(year),
            month: u32::from(field(REG_MONTH)?),
            day: u32::from(field(REG_DAY)?),
            hour: self.decode_hour(self.ram[REG_HOURS])?,
            minute: field(REG_MINUTES)?,
            second: field(REG_SECONDS)?,
            weekday: 1,
        }
        .to_unix()
    }

    /// The time read through the data port.
    fn time_register(&self, reg: usize, now_ns: u64) -> u8 {
        if self.ram[REG_B] & B_SET != 0 {
            return self.ram[reg];
        }
        let t = DateTime::from_unix(self.unix_secs(now_ns));
        self.encode_time(&t)
            .into_iter()
            .find(|&(r, _)| r == reg)
            .map_or(self.ram[reg], |(_, v)| v)
    }

    /// The periodic interrupt period in 32.768 kHz pulses, None when off.
    fn periodic_period(&self) -> Option<u64> {
        match self.ram[REG_A] & 0x0f {
            0 => None,
            // Rates 1 and 2 repeat rates 8 and 9 with a 32.768 kHz time base.
            rate @ 1..=2 => Some(1 << (rate + 6)),
            rate => Some(1 << (rate - 1)),
        }
    }

    /// Whether the time passed the alarm at a second boundary in `(last_ns, now_ns]`.
    fn alarm_rang(&self, last_ns: u64, now_ns: u64) -> bool {
        let alarm = |reg: usize| -> Option<Option<u8>> {
            let v = self.ram[reg];
            if v >= ALARM_ANY {
                return Some(None);
            }
            let decoded = if reg == REG_HOURS_ALARM {
                self.decode_hour(v)
            } else {
                self.decode(v)
            };
            decoded.map(Some)
        };
        // An alarm value that can never match (e.g. bad BCD) never rings.
        let (Some(sec), Some(min), Some(hour)) = (
            alarm(REG_SECONDS_ALARM),
            alarm(REG_MINUTES_ALARM),
            alarm(REG_HOURS_ALARM),
        ) else {
            return false;
        };
        let first = self.unix_secs(last_ns).saturating_add(1);
        let last = self.unix_secs(now_ns);
        if last < first {
            return false;
        }
        // The alarm repeats daily at most: a day of boundaries tells everything.
        let start = first.max(last.saturating_sub(SECS_PER_DAY - 1));
        let matches = |want: Option<u8>, have: u64| want.is_none_or(|w| u64::from(w) == have);
        (start..=last).any(|t| {
            let tod = t % SECS_PER_DAY;
            matches(sec, tod % 60) && matches(min, (tod / 60) % 60) && matches(hour, tod / 3600)
        })
    }

    /// Set register C's flags for the events between the last check and `now_ns`.
    fn update_flags(&mut self, now_ns: u64) {
        let last = self.flags_checked_ns;
        if now_ns <= last {
            return;
        }
        self.flags_checked_ns = now_ns;
        let mut c = self.ram[REG_C];
        // No updates (so no update or alarm events) while SET holds the time.
        if self.ram[REG_B] & B_SET == 0 && now_ns / NS_PER_SEC > last / NS_PER_SEC {
            c |= C_UF;
            if c & C_AF == 0 && self.alarm_rang(last, now_ns) {
                c |= C_AF;
            }
        }
        if let Some(period) = self.periodic_period() {
            if ticks_32k(now_ns) / period > ticks_32k(last) / period {
                c |= C_PF;
            }
        }
        self.ram[REG_C] = c;
        self.update_irqf();
    }

    /// IRQF is set, and the line raised, when a flag is set whose interrupt is enabled.
    fn update_irqf(&mut self) {
        let c = self.ram[REG_C];
        if c & C_IRQF == 0 && c & self.ram[REG_B] & C_FLAGS != 0 {
            self.ram[REG_C] = c | C_IRQF;
            if let Some(irq) = &self.irq {
                irq.raise();
            }
        }
    }

    fn read_register(&mut self, reg: usize, now_ns: u64) -> u8 {
        match reg {
            REG_A => {
                let in_update =
                    self.ram[REG_B] & B_SET == 0 && now_ns % NS_PER_SEC >= NS_PER_SEC - UIP_NS;
                (self.ram[REG_A] & !A_UIP) | if in_update { A_UIP } else { 0 }
            }
            // Reading C acknowledges every event.
            REG_C => std::mem::take(&mut self.ram[REG_C]),
            REG_D => D_VRT,
            r if TIME_REGISTERS.contains(&r) => self.time_register(r, now_ns),
            _ => self.ram[reg],
        }
    }

    fn write_register(&mut self, reg: usize, value: u8, now_ns: u64) {
        match reg {
            REG_A => self.ram[REG_A] = value & !A_UIP,
            REG_B => self.write_b(value, now_ns),
            REG_C | REG_D => {} // read-only
            r if TIME_REGISTERS.contains(&r) => {
                if self.ram[REG_B] & B_SET != 0 {
                    self.ram[r] = value;
                } else {
                    // A single field written while the clock runs: the time moves to the
                    // written value; values that make no valid date are ignored.
                    self.freeze_time(now_ns);
                    self.ram[r] = value;
                    if let Some(t) = self.frozen_time() {
                        self.set_time(t, now_ns);
                    }
                }
            }
            _ => self.ram[reg] = value,
        }
    }

    fn write_b(&mut self, value: u8, now_ns: u64) {
        let old = self.ram[REG_B];
        // Setting SET also clears UIE, as on the chip.
        let new = if value & B_SET != 0 {
            value & !B_UIE
        } else {
            value
        };
        self.ram[REG_B] = new;
        if old & B_SET == 0 && new & B_SET != 0 {
            // Hold the time in RAM (in the new format) for the guest to rewrite.
            self.freeze_time(now_ns);
        } else if old & B_SET != 0 && new & B_SET == 0 {
            if let Some(t) = self.frozen_time() {
                self.set_time(t, now_ns);
            }
        }
        self.update_irqf();
    }
}

/// The memory-size registers a PC BIOS fills in.
fn fill_memory_size(ram: &mut [u8; 128], mem_bytes: u64) {
    let mut put16 = |reg: usize, value: u64| {
        let [lo, hi, ..] = value.min(0xffff).to_le_bytes();
        ram[reg] = lo;
        ram[reg + 1] = hi;
    };
    // Base memory in KiB (conventional memory, at most 640 KiB).
    put16(0x15, (mem_bytes / 1024).min(640));
    // Extended memory above 1 MiB in KiB, capped at 0xffff (about 64 MiB).
    let extended = mem_bytes.min(LOW_RAM_END).saturating_sub(1 << 20) / 1024;
    put16(0x17, extended);
    put16(0x30, extended);
    // Memory above 16 MiB below 4 GiB in 64 KiB blocks.
    put16(
        0x34,
        mem_bytes.min(LOW_RAM_END).saturating_sub(16 << 20) >> 16,
    );
    // Memory above 4 GiB in 64 KiB blocks, three bytes.
    let high = (mem_bytes.saturating_sub(LOW_RAM_END) >> 16).min(0xff_ffff);
    ram[0x5b] = high as u8;
    ram[0x5c] = (high >> 8) as u8;
    ram[0x5d] = (high >> 16) as u8;
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset != 1 {
            // The index register is write-only; other widths are not decoded.
            data.fill(0xff);
            return;
        }
        let now_ns = self.clock.now_ns();
        self.update_flags(now_ns);
        data[0] = self.read_register(usize::from(self.index), now_ns);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let &[value] = data else { return };
        match offset {
            0 => {
                self.nmi_disabled = value & 0x80 != 0;
                self.index = value & 0x7f;
            }
            1 => {
                let now_ns = self.clock.now_ns();
                self.update_flags(now_ns);
                self.write_register(usize::from(self.index), value, now_ns);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeClock;
    use crate::IrqLines;

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

    /// (hours, minutes, seconds, day, month, year, century) as read.
    fn read_time(c: &mut Cmos) -> [u8; 7] {
        [4, 2, 0, 7, 8, 9, 0x32].map(|r| read(c, r))
    }

    // 2026-01-01T00:00:00Z, a Thursday.
    const EPOCH: u64 = 1_767_225_600;
    const SEC: u64 = NS_PER_SEC;

    fn cmos() -> (Cmos, Arc<FakeClock>) {
        let clock = FakeClock::new();
        (Cmos::new(clock.clone(), EPOCH, 64 << 20), clock)
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days((EPOCH / 86_400) as i64), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d <= days_in_month(y, m));
        }
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2024, 2), 29);
    }

    #[test]
    fn bcd_date_and_time_follow_the_clock() {
        let (mut c, clock) = cmos();
        assert_eq!(read_time(&mut c), [0, 0, 0, 0x01, 0x01, 0x26, 0x20]);
        assert_eq!(read(&mut c, 6), 5, "Thursday");
        clock.set((13 * 3600 + 45 * 60 + 30) * SEC + 999_999_999);
        assert_eq!(
            read_time(&mut c),
            [0x13, 0x45, 0x30, 0x01, 0x01, 0x26, 0x20]
        );
        // 2028-02-29 23:59:59 (a leap day) then 2028-03-01.
        let leap = 1_835_481_599 - EPOCH;
        clock.set(leap * SEC);
        assert_eq!(
            read_time(&mut c),
            [0x23, 0x59, 0x59, 0x29, 0x02, 0x28, 0x20]
        );
        clock.set((leap + 1) * SEC);
        assert_eq!(read_time(&mut c), [0, 0, 0, 0x01, 0x03, 0x28, 0x20]);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let (mut c, clock) = cmos();
        clock.set((13 * 3600 + 45 * 60 + 30) * SEC);
        write(&mut c, 0x0b, B_BINARY); // binary, 12-hour
        assert_eq!(read(&mut c, 4), 0x80 | 1, "1 PM");
        assert_eq!(read(&mut c, 2), 45);
        assert_eq!(read(&mut c, 9), 26);
        assert_eq!(read(&mut c, 0x32), 20);
        clock.set(30 * SEC);
        assert_eq!(read(&mut c, 4), 12, "midnight is 12 AM");
        clock.set(12 * 3600 * SEC);
        assert_eq!(read(&mut c, 4), 0x80 | 12, "noon is 12 PM");
        write(&mut c, 0x0b, 0); // BCD, 12-hour
        clock.set(23 * 3600 * SEC);
        assert_eq!(read(&mut c, 4), 0x80 | 0x11, "11 PM in BCD");
    }

    #[test]
    fn update_in_progress_near_the_end_of_a_second() {
        let (mut c, clock) = cmos();
        clock.set(500_000_000);
        assert_eq!(read(&mut c, 0x0a), 0x26);
        clock.set(SEC - UIP_NS - 1);
        assert_eq!(read(&mut c, 0x0a) & 0x80, 0);
        clock.set(SEC - UIP_NS);
        assert_eq!(read(&mut c, 0x0a) & 0x80, 0x80);
        clock.set(2 * SEC - 1);
        assert_eq!(read(&mut c, 0x0a) & 0x80, 0x80);
        clock.set(2 * SEC);
        assert_eq!(read(&mut c, 0x0a) & 0x80, 0);
        write(&mut c, 0x0a, 0xff);
        assert_eq!(read(&mut c, 0x0a), 0x7f, "UIP is read-only");
        assert_eq!(read(&mut c, 0x0d), 0x80);
    }

    #[test]
    fn memory_size_registers_and_nvram() {
        let (mut c, _clock) = cmos();
        let word = |c: &mut Cmos, reg: u8| u16::from_le_bytes([read(c, reg), read(c, reg + 1)]);
        assert_eq!(word(&mut c, 0x15), 640);
        assert_eq!(word(&mut c, 0x17), 63 * 1024);
        assert_eq!(word(&mut c, 0x30), 63 * 1024);
        assert_eq!(word(&mut c, 0x34), 48 * 16);
        assert_eq!(
            [read(&mut c, 0x5b), read(&mut c, 0x5c), read(&mut c, 0x5d)],
            [0; 3]
        );
        write(&mut c, 0x40, 0x5a);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        write(&mut c, 0x0d, 0);
        assert_eq!(read(&mut c, 0x0d), 0x80, "register D is read-only");

        // 8 GiB: 3 GiB below the hole, 5 GiB above 4 GiB.
        let mut big = Cmos::new(FakeClock::new(), EPOCH, 8 << 30);
        assert_eq!(word(&mut big, 0x17), 0xffff);
        assert_eq!(
            word(&mut big, 0x34),
            (((3u64 << 30) - (16 << 20)) >> 16) as u16
        );
        let high = u32::from_le_bytes([
            read(&mut big, 0x5b),
            read(&mut big, 0x5c),
            read(&mut big, 0x5d),
            0,
        ]);
        assert_eq!(high, 5 << 14);
        let mut huge = Cmos::new(FakeClock::new(), EPOCH, u64::MAX);
        assert_eq!(
            [
                read(&mut huge, 0x5b),
                read(&mut huge, 0x5c),
                read(&mut huge, 0x5d)
            ],
            [0xff; 3]
        );
    }

    #[test]
    fn index_port_and_nmi_mask() {
        let (mut c, _clock) = cmos();
        c.write(CMOS_BASE, 0, &[0x80 | 0x40]);
        assert!(c.nmi_disabled());
        c.write(CMOS_BASE, 1, &[0x77]);
        c.write(CMOS_BASE, 0, &[0x40]);
        assert!(!c.nmi_disabled());
        let mut b = [0];
        c.read(CMOS_BASE, 1, &mut b);
        assert_eq!(b[0], 0x77);
        c.read(CMOS_BASE, 0, &mut b);
        assert_eq!(b[0], 0xff, "index port is write-only");
        let mut w = [0; 2];
        c.read(CMOS_BASE, 1, &mut w);
        assert_eq!(w, [0xff; 2]);
    }

    #[test]
    fn setting_the_time_with_the_set_bit() {
        let (mut c, clock) = cmos();
        clock.set(10 * SEC + 300_000_000);
        write(&mut c, 0x0b, B_24H | B_SET);
        // The time is frozen while SET is on (and no update is ever in progress).
        clock.set(21 * SEC - 1000);
        assert_eq!(read(&mut c, 0), 0x10);
        assert_eq!(
            read(&mut c, 0x0a) & 0x80,
            0,
            "no update in progress while SET"
        );
        // Linux's order: seconds, minutes, hours, day, month, year, century.
        for (reg, v) in [
            (0, 0x56),
            (2, 0x34),
            (4, 0x12),
            (7, 0x24),
            (8, 0x12),
            (9, 0x99),
            (0x32, 0x19),
        ] {
            write(&mut c, reg, v);
        }
        clock.set(25 * SEC);
        write(&mut c, 0x0b, B_24H);
        assert_eq!(
            read_time(&mut c),
            [0x12, 0x34, 0x56, 0x24, 0x12, 0x99, 0x19]
        );
        assert_eq!(read(&mut c, 6), 6, "1999-12-24 was a Friday");
        clock.set(29 * SEC);
        assert_eq!(
            read_time(&mut c),
            [0x12, 0x35, 0x00, 0x24, 0x12, 0x99, 0x19]
        );
    }

    #[test]
    fn single_field_writes_and_invalid_values() {
        let (mut c, clock) = cmos();
        clock.set(5 * SEC);
        write(&mut c, 4, 0x17);
        assert_eq!(read_time(&mut c), [0x17, 0, 5, 0x01, 0x01, 0x26, 0x20]);
        write(&mut c, 8, 0x13); // month 13
        write(&mut c, 7, 0x4a); // not BCD
        write(&mut c, 0, 0x60); // second 60
        assert_eq!(read_time(&mut c), [0x17, 0, 5, 0x01, 0x01, 0x26, 0x20]);
        // A date that does not exist is refused as a whole.
        write(&mut c, 0x0b, B_24H | B_SET);
        write(&mut c, 8, 0x02);
        write(&mut c, 7, 0x30);
        write(&mut c, 0x0b, B_24H);
        assert_eq!(read_time(&mut c), [0x17, 0, 5, 0x01, 0x01, 0x26, 0x20]);
    }

    #[test]
    fn register_c_flags_and_irq8() {
        let clock = FakeClock::new();
        let lines = IrqLines::new();
        let mut c =
            Cmos::new(clock.clone(), EPOCH, 64 << 20).with_irq(IrqLine::new(lines.clone(), 8));
        clock.set(SEC / 2);
        assert_eq!(
            read(&mut c, 0x0c),
            C_PF,
            "1024 Hz periodic flag, no interrupt enabled"
        );
        assert_eq!(lines.take(), 0);
        assert_eq!(c.next_irq_deadline_ns(), None);
        // Update-ended interrupt.
        write(&mut c, 0x0b, B_24H | B_UIE);
        assert_eq!(c.next_irq_deadline_ns(), Some(SEC));
        clock.set(SEC - 1);
        assert!(!c.poll_irq());
        clock.set(SEC);
        assert!(c.poll_irq());
        assert_eq!(lines.take(), 1 << 8);
        assert_eq!(c.next_irq_deadline_ns(), None, "until register C is read");
        assert_eq!(read(&mut c, 0x0c), C_IRQF | C_UF | C_PF);
        assert_eq!(read(&mut c, 0x0c), 0, "reading C cleared it");
        assert_eq!(c.next_irq_deadline_ns(), Some(2 * SEC));
        // Periodic interrupt at 2 Hz (rate 15).
        write(&mut c, 0x0b, B_24H | B_PIE);
        write(&mut c, 0x0a, 0x2f);
        assert_eq!(c.next_irq_deadline_ns(), Some(SEC + SEC / 2));
        clock.set(SEC + SEC / 2);
        assert!(c.poll_irq());
        assert_eq!(read(&mut c, 0x0c), C_IRQF | C_PF);
        // Alarm at 00:00:05 (BCD), any hour.
        write(&mut c, 0x0a, 0x20);
        write(&mut c, 0x0b, B_24H | B_AIE);
        write(&mut c, 1, 0x05);
        write(&mut c, 3, 0x00);
        write(&mut c, 5, 0xff);
        clock.set(4 * SEC);
        assert!(!c.poll_irq());
        assert_eq!(read(&mut c, 0x0c), C_UF);
        clock.set(5 * SEC);
        assert!(c.poll_irq());
        assert_eq!(read(&mut c, 0x0c), C_IRQF | C_AF | C_UF);
        // Once an hour: a long sleep across 01:00:05 rings it again.
        clock.set(3 * 3600 * SEC);
        assert!(c.poll_irq());
        assert_eq!(read(&mut c, 0x0c), C_IRQF | C_AF | C_UF);
        assert_eq!(lines.take(), 1 << 8);
    }

    #[test]
    fn enabling_an_interrupt_for_a_pending_flag_raises_it() {
        let clock = FakeClock::new();
        let lines = IrqLines::new();
        let mut c =
            Cmos::new(clock.clone(), EPOCH, 64 << 20).with_irq(IrqLine::new(lines.clone(), 8));
        clock.set(3 * SEC);
        assert!(!c.poll_irq(), "UF set but not enabled");
        write(&mut c, 0x0b, B_24H | B_UIE);
        assert_eq!(lines.take(), 1 << 8);
    }

    #[test]
    fn state_round_trips_and_restored_clock_behaves_the_same() {
        let (mut c, clock) = cmos();
        write(&mut c, 0x50, 7);
        write(&mut c, 4, 0x08); // moved the clock
        write(&mut c, 0x0b, B_24H | B_BINARY | B_UIE);
        c.write(CMOS_BASE, 0, &[0x80 | 0x0c]);
        clock.set(3 * SEC);
        let json = serde_json::to_string(&c.state()).unwrap();
        let mut r = Cmos::from_state(serde_json::from_str(&json).unwrap(), clock.clone()).unwrap();
        assert_eq!(r.state(), c.state());
        assert!(r.nmi_disabled());
        for t in [3 * SEC, 4 * SEC + 5, 100 * SEC] {
            clock.set(t);
            for reg in [0x0c, 0x50, 0, 2, 4, 7, 8, 9, 0x0a] {
                assert_eq!(read(&mut r, reg), read(&mut c, reg), "register {reg:#x}");
            }
        }
    }

    #[test]
    fn invalid_states_are_rejected() {
        let (c, clock) = cmos();
        type Corrupt = fn(&mut CmosState);
        let cases: [(Corrupt, &str); 6] = [
            (|s| s.ram.truncate(100), "ram"),
            (|s| s.index = 0x80, "index"),
            (|s| s.base_unix_secs = u64::MAX, "base_unix_secs"),
            (|s| s.offset_secs = i64::MIN, "offset_secs"),
            (|s| s.ram[REG_A] = 0xa6, "register A"),
            (|s| s.ram[REG_C] = 0x01, "register C"),
        ];
        for (corrupt, what) in cases {
            let mut bad = c.state();
            corrupt(&mut bad);
            let err = Cmos::from_state(bad, clock.clone()).err().unwrap();
            assert!(err.reason.contains(what), "{err}");
        }
    }

    #[test]
    fn survives_random_access() {
        let clock = FakeClock::new();
        clock.set(u64::MAX / 2);
        let lines = IrqLines::new();
        let mut c =
            Cmos::new(clock.clone(), u64::MAX / 4, u64::MAX).with_irq(IrqLine::new(lines, 8));
        crate::testing::hammer(&mut c, &[CMOS_BASE], 2, Some(&clock));
        let _ = c.poll_irq();
        let _ = c.next_irq_deadline_ns();
        assert!(Cmos::from_state(c.state(), clock.clone()).is_ok());
        // Every register, every value, every format.
        let mut c = Cmos::new(clock.clone(), 0, 0);
        for reg in 0..128u8 {
            for v in 0..=255u8 {
                write(&mut c, reg, v);
                let _ = read(&mut c, reg);
                clock.advance(7_777_777);
            }
        }
        assert!(Cmos::from_state(c.state(), clock).is_ok());
    }
}
