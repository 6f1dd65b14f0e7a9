//! The i8254 programmable interval timer (ports 0x40-0x43) and port 0x61 (system control
//! port B: channel-2 gate, speaker, refresh toggle, channel-2 output).
//!
//! Nothing here runs on its own: every counter value and output level is computed from the
//! injected clock at the moment it is asked for, so two machines that see the same clock
//! readings see the same timer. BCD counting is stored and reported but counted in binary
//! (no PC OS programs the PIT in BCD).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, Clock, StateError};

/// Input clock of the i8254 on a PC.
pub const PIT_HZ: u64 = 1_193_182;
pub const PIT_BASE: u64 = 0x40;
pub const PORT_61: u64 = 0x61;
/// Port 0x61 bit 4 toggles with each DRAM refresh cycle, every 15.085 us.
const REFRESH_NS: u64 = 15_085;

fn ticks_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000 / u128::from(PIT_HZ)) as u64
}

fn ns_to_ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / 1_000_000_000) as u64
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelState {
    /// 0..=5 (6 and 7 are stored as 2 and 3).
    pub mode: u8,
    /// 1 = low byte, 2 = high byte, 3 = low then high.
    pub access: u8,
    pub bcd: bool,
    /// Reload value, 1..=65536.
    pub count: u32,
    /// Low byte written so far of a low-then-high count write.
    pub pending_low: Option<u8>,
    /// Counting started at this virtual time (None: no count loaded since the mode write).
    pub loaded_at_ns: Option<u64>,
    pub gate: bool,
    /// Counter value frozen by a latch command, and whether its low byte was read.
    pub latched: Option<u16>,
    pub latched_low_read: bool,
    pub status_latched: Option<u8>,
    /// Low byte of a low-then-high read already returned.
    pub read_low_done: bool,
}

impl ChannelState {
    fn new(gate: bool) -> Self {
        Self {
            mode: 3,
            access: 3,
            bcd: false,
            count: 65536,
            pending_low: None,
            loaded_at_ns: None,
            gate,
            latched: None,
            latched_low_read: false,
            status_latched: None,
            read_low_done: false,
        }
    }

    fn validate(&self) -> Result<(), StateError> {
        let err = |r: String| Err(StateError::new("PIT", r));
        if self.mode > 5 {
            return err(format!("mode {}", self.mode));
        }
        if !(1..=3).contains(&self.access) {
            return err(format!("access mode {}", self.access));
        }
        if !(1..=65536).contains(&self.count) {
            return err(format!("count {}", self.count));
        }
        Ok(())
    }

    /// Input clock ticks since counting started.
    fn elapsed(&self, now: u64) -> Option<u64> {
        self.loaded_at_ns
            .map(|t| ns_to_ticks(now.saturating_sub(t)))
    }

    fn counter(&self, now: u64) -> u16 {
        let count = u64::from(self.count);
        let Some(t) = self.elapsed(now) else {
            return self.count as u16;
        };
        let value = match self.mode {
            2 => count - (t % count),
            // Square wave: the counter steps by two, reloading every half period.
            3 => {
                let half = count.div_ceil(2).max(1);
                count - 2 * ((t % count) % half).min(half - 1)
            }
            // One-shot modes count down through zero and wrap.
            _ => (count + 0x1_0000 - (t % 0x1_0000)) % 0x1_0000,
        };
        value as u16
    }

    fn output(&self, now: u64) -> bool {
        let count = u64::from(self.count);
        let Some(t) = self.elapsed(now) else {
            // After a mode write: mode 0 starts low, the others high.
            return self.mode != 0;
        };
        match self.mode {
            0 | 1 => t >= count,
            2 => t % count != count - 1,
            3 => (t % count) < count.div_ceil(2),
            _ => t != count,
        }
    }

    /// Rising edges of the output since counting started, up to `now`.
    fn rising_edges(&self, now: u64) -> u64 {
        let count = u64::from(self.count);
        let Some(t) = self.elapsed(now) else { return 0 };
        match self.mode {
            2 | 3 => t / count,
            _ => u64::from(t >= count),
        }
    }

    /// When the next rising edge after `edges` of them happens (virtual ns).
    fn edge_deadline(&self, edges: u64) -> Option<u64> {
        let start = self.loaded_at_ns?;
        let count = u64::from(self.count);
        let ticks = match self.mode {
            2 | 3 => (edges + 1).checked_mul(count)?,
            _ if edges == 0 => count,
            _ => return None,
        };
        // Round up so that at the deadline the edge is already visible.
        Some(start.saturating_add(ticks_to_ns(ticks) + 1))
    }

    fn status(&self, now: u64) -> u8 {
        let null_count = match self.loaded_at_ns {
            None => true,
            // The written count reaches the counter with the next input clock pulse.
            Some(_) => self.elapsed(now) == Some(0),
        };
        (u8::from(self.output(now)) << 7)
            | (u8::from(null_count) << 6)
            | (self.access << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    fn write_control(&mut self, value: u8) {
        let access = (value >> 4) & 3;
        if access == 0 {
            return; // latch commands are handled by the caller
        }
        let mode = (value >> 1) & 7;
        self.mode = if mode >= 6 { mode - 4 } else { mode };
        self.access = access;
        self.bcd = value & 1 != 0;
        self.loaded_at_ns = None;
        self.pending_low = None;
        self.read_low_done = false;
        self.latched = None;
        self.status_latched = None;
    }

    fn latch_count(&mut self, now: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.counter(now));
            self.latched_low_read = false;
        }
    }

    fn write_count(&mut self, value: u8, now: u64) {
        let full = match self.access {
            1 => Some(u16::from(value)),
            2 => Some(u16::from(value) << 8),
            _ => match self.pending_low.take() {
                Some(low) => Some(u16::from(low) | (u16::from(value) << 8)),
                None => {
                    self.pending_low = Some(value);
                    None
                }
            },
        };
        if let Some(n) = full {
            self.count = if n == 0 { 65536 } else { u32::from(n) };
            // Modes 1 and 5 wait for a gate trigger; the others start now (if gated on).
            self.loaded_at_ns = (self.gate && !matches!(self.mode, 1 | 5)).then_some(now);
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status_latched.take() {
            return status;
        }
        let (value, lohi) = match self.latched {
            Some(v) => (v, true),
            None => (self.counter(now), false),
        };
        let [low, high] = value.to_le_bytes();
        match self.access {
            1 => {
                self.latched = None;
                low
            }
            2 => {
                self.latched = None;
                high
            }
            _ if lohi => {
                if self.latched_low_read {
                    self.latched = None;
                    high
                } else {
                    self.latched_low_read = true;
                    low
                }
            }
            _ => {
                self.read_low_done = !self.read_low_done;
                if self.read_low_done {
                    low
                } else {
                    high
                }
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate && !self.gate {
            // A rising gate (re)starts counting in every mode but 0 and 4, which resume.
            if !matches!(self.mode, 0 | 4) || self.loaded_at_ns.is_none() {
                self.loaded_at_ns = Some(now);
            }
        }
        self.gate = gate;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PitState {
    pub channels: [ChannelState; 3],
    /// Rising edges of channel 0 already turned into IRQ0.
    pub irq0_edges: u64,
    pub speaker: bool,
}

pub struct Pit {
    channels: [ChannelState; 3],
    irq0_edges: u64,
    speaker: bool,
    clock: Arc<dyn Clock>,
}

impl Pit {
    /// The state a PC BIOS leaves: channel 0 in mode 3 with count 65536 (18.2 Hz),
    /// running since time zero; channel 2 gated off.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let mut ch0 = ChannelState::new(true);
        ch0.loaded_at_ns = Some(0);
        Self {
            channels: [ch0, ChannelState::new(true), ChannelState::new(false)],
            irq0_edges: 0,
            speaker: false,
            clock,
        }
    }

    pub fn state(&self) -> PitState {
        PitState {
            channels: self.channels.clone(),
            irq0_edges: self.irq0_edges,
            speaker: self.speaker,
        }
    }

    pub fn from_state(state: PitState, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        for ch in &state.channels {
            ch.validate()?;
        }
        Ok(Self {
            channels: state.channels,
            irq0_edges: state.irq0_edges,
            speaker: state.speaker,
            clock,
        })
    }

    /// Whether channel 0 produced a rising edge since the last poll. Several missed
    /// periods make one edge, as they would on the PIC's edge-triggered input.
    pub fn poll_irq0(&mut self) -> bool {
        let edges = self.channels[0].rising_edges(self.clock.now_ns());
        if edges > self.irq0_edges {
            self.irq0_edges = edges;
            true
        } else {
            false
        }
    }

    /// When channel 0's next rising edge is due, for sleeping a halted vCPU.
    pub fn next_irq0_deadline_ns(&self) -> Option<u64> {
        self.channels[0].edge_deadline(self.irq0_edges)
    }

    fn control(&mut self, value: u8, now: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x10 == 0 && ch.status_latched.is_none() {
                    ch.status_latched = Some(ch.status(now));
                }
                if value & 0x20 == 0 {
                    ch.latch_count(now);
                }
            }
            return;
        }
        let ch = &mut self.channels[usize::from(select)];
        if (value >> 4) & 3 == 0 {
            ch.latch_count(now);
        } else {
            ch.write_control(value);
            if select == 0 {
                self.irq0_edges = 0;
            }
        }
    }

    fn port61(&self, now: u64) -> u8 {
        let ch2 = &self.channels[2];
        u8::from(ch2.gate)
            | (u8::from(self.speaker) << 1)
            | (u8::from((now / REFRESH_NS) % 2 == 1) << 4)
            | (u8::from(ch2.output(now)) << 5)
    }
}

impl BusDevice for Pit {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        let now = self.clock.now_ns();
        data[0] = match (base, offset) {
            (PIT_BASE, 0..=2) => self.channels[offset as usize].read(now),
            (PORT_61, 0) => self.port61(now),
            _ => 0xff,
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        let now = self.clock.now_ns();
        match (base, offset) {
            (PIT_BASE, 3) => self.control(*value, now),
            (PIT_BASE, 0..=2) => {
                self.channels[offset as usize].write_count(*value, now);
                if offset == 0 {
                    self.irq0_edges = 0;
                }
            }
            (PORT_61, 0) => {
                self.speaker = value & 2 != 0;
                self.channels[2].set_gate(value & 1 != 0, now);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeClock;

    fn pit() -> (Pit, Arc<FakeClock>) {
        let clock = FakeClock::new();
        (Pit::new(clock.clone()), clock)
    }

    fn out(pit: &mut Pit, port: u64, v: u8) {
        if port == PORT_61 {
            pit.write(PORT_61, 0, &[v]);
        } else {
            pit.write(PIT_BASE, port - PIT_BASE, &[v]);
        }
    }

    fn inb(pit: &mut Pit, port: u64) -> u8 {
        let mut b = [0];
        if port == PORT_61 {
            pit.read(PORT_61, 0, &mut b);
        } else {
            pit.read(PIT_BASE, port - PIT_BASE, &mut b);
        }
        b[0]
    }

    fn read_latched(pit: &mut Pit, ch: u8) -> u16 {
        out(pit, 0x43, ch << 6);
        let lo = inb(pit, 0x40 + u64::from(ch));
        let hi = inb(pit, 0x40 + u64::from(ch));
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn bios_channel0_ticks_at_18_hz() {
        let (mut pit, clock) = pit();
        assert!(!pit.poll_irq0());
        let period = ticks_to_ns(65536);
        assert_eq!(pit.next_irq0_deadline_ns(), Some(period + 1));
        clock.set(period + 1);
        assert!(pit.poll_irq0());
        assert!(!pit.poll_irq0());
    }

    #[test]
    fn mode2_rate_generator_period_and_counter() {
        let (mut pit, clock) = pit();
        clock.set(1_000);
        out(&mut pit, 0x43, 0x34);
        out(&mut pit, 0x40, 0xa9); // 1193 = 0x04a9: 1 kHz
        out(&mut pit, 0x40, 0x04);
        clock.set(1_000 + ticks_to_ns(100) + 1);
        assert_eq!(read_latched(&mut pit, 0), 1193 - 100);
        assert!(!pit.poll_irq0());
        let deadline = pit.next_irq0_deadline_ns().unwrap();
        assert!(
            (1_000 + 999_000..1_000 + 1_001_000).contains(&deadline),
            "{deadline}"
        );
        clock.set(deadline);
        assert!(pit.poll_irq0());
        // Missed periods coalesce into one edge.
        clock.set(deadline + 10_000_000);
        assert!(pit.poll_irq0());
        assert!(!pit.poll_irq0());
    }

    #[test]
    fn mode0_one_shot() {
        let (mut pit, clock) = pit();
        out(&mut pit, 0x43, 0x30);
        out(&mut pit, 0x40, 10);
        out(&mut pit, 0x40, 0);
        clock.set(ticks_to_ns(5) + 1);
        assert!(!pit.poll_irq0());
        clock.set(ticks_to_ns(11));
        assert!(pit.poll_irq0());
        clock.set(ticks_to_ns(100_000));
        assert!(!pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), None);
    }

    #[test]
    fn readback_status_null_count_clears_once_loaded() {
        let (mut pit, clock) = pit();
        clock.set(500);
        out(&mut pit, 0x43, 0x30);
        out(&mut pit, 0x43, 0xe2); // read back status of channel 0
        assert_ne!(
            inb(&mut pit, 0x40) & 0x40,
            0,
            "null count before a count is written"
        );
        out(&mut pit, 0x40, 0xff);
        out(&mut pit, 0x40, 0xff);
        clock.set(500 + ticks_to_ns(2));
        out(&mut pit, 0x43, 0xe2);
        let status = inb(&mut pit, 0x40);
        assert_eq!(status & 0x40, 0, "null count clear: {status:#x}");
        assert_eq!(status & 0x3f, 0x30, "access lohi, mode 0");
    }

    #[test]
    fn lobyte_access_and_plain_reads() {
        let (mut pit, clock) = pit();
        out(&mut pit, 0x43, 0x94); // channel 2, lobyte, mode 2
        out(&mut pit, PORT_61, 1); // gate on
        out(&mut pit, 0x42, 200);
        clock.set(ticks_to_ns(50) + 1);
        assert_eq!(inb(&mut pit, 0x42), 150);
    }

    #[test]
    fn port61_gate_refresh_and_output() {
        let (mut pit, clock) = pit();
        assert_eq!(inb(&mut pit, PORT_61) & 0x01, 0);
        clock.set(REFRESH_NS);
        let a = inb(&mut pit, PORT_61) & 0x10;
        clock.set(2 * REFRESH_NS);
        let b = inb(&mut pit, PORT_61) & 0x10;
        assert_ne!(a, b, "refresh bit toggles");
        out(&mut pit, 0x43, 0xb0); // channel 2, mode 0
        out(&mut pit, 0x42, 10);
        out(&mut pit, 0x42, 0);
        out(&mut pit, PORT_61, 3);
        assert_eq!(
            inb(&mut pit, PORT_61) & 0x23,
            0x03,
            "gate and speaker on, output low"
        );
        clock.set(2 * REFRESH_NS + ticks_to_ns(11));
        assert_eq!(
            inb(&mut pit, PORT_61) & 0x20,
            0x20,
            "terminal count reached"
        );
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let (mut pit, clock) = pit();
        out(&mut pit, 0x43, 0x34);
        out(&mut pit, 0x40, 0xa9);
        out(&mut pit, 0x40, 0x04);
        clock.set(3_000_000);
        let json = serde_json::to_string(&pit.state()).unwrap();
        let mut restored =
            Pit::from_state(serde_json::from_str(&json).unwrap(), clock.clone()).unwrap();
        assert_eq!(restored.poll_irq0(), pit.poll_irq0());
        assert_eq!(read_latched(&mut restored, 0), read_latched(&mut pit, 0));
        let mut bad = pit.state();
        bad.channels[1].count = 0;
        assert!(Pit::from_state(bad, clock.clone()).is_err());
        let mut bad = pit.state();
        bad.channels[0].mode = 7;
        assert!(Pit::from_state(bad, clock).is_err());
    }

    #[test]
    fn survives_random_access() {
        let (mut pit, clock) = pit();
        clock.set(123_456_789);
        crate::testing::hammer(&mut pit, &[PIT_BASE, PORT_61], 4, Some(&clock));
        let _ = pit.poll_irq0();
        let _ = pit.next_irq0_deadline_ns();
    }
}
