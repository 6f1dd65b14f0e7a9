//! The i8254 programmable interval timer (ports 0x40-0x43) and port 0x61 (system control
//! port B: channel-2 gate, speaker data, refresh toggle, channel-2 output).
//!
//! Nothing here runs on its own. Time is the injected clock, turned into pulses of the
//! 1.193182 MHz input clock (`tick k` = the k-th pulse since the machine started); every
//! counter value and output level is a function of the tick at which it is asked for and
//! of the ticks at which the guest programmed the channel. Two machines that see the same
//! clock readings therefore see the same timer.
//!
//! Each channel is a counting element that was loaded at some tick and has counted since
//! (`Run::Counting`), is stopped by its gate (`Run::Paused`), waits for a gate trigger
//! (`Run::Armed`) or has no count yet (`Run::Idle`). Following the 8254 data sheet:
//! - a count written after a control word is loaded on the next input pulse (NULL COUNT is
//!   set from the write until then);
//! - in modes 2 and 3 a count written while counting is loaded at the end of the current
//!   period (mode 2) or half period (mode 3); in modes 0 and 4 it restarts counting on the
//!   next pulse; in modes 1 and 5 it waits for the next gate trigger;
//! - the gate pauses modes 0 and 4, stops modes 2 and 3 (output forced high, reload on the
//!   rising edge) and triggers modes 1 and 5. Channels 0 and 1 have their gates tied high;
//!   channel 2's gate is port 0x61 bit 0.
//!
//! BCD mode is stored and reported in the status byte, but counting is binary: no PC
//! operating system programs the PIT in BCD, and a BCD count would only change the
//! period of the guest's own timer.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, Clock, StateError};

/// Input clock of the i8254 on a PC.
pub const PIT_HZ: u64 = 1_193_182;
/// Ports of counters 0..3 (0x40-0x42) and the control word register (0x43).
pub const PIT_BASE: u64 = 0x40;
/// System control port B.
pub const PORT_61: u64 = 0x61;
/// Port 0x61 bit 4 toggles with each DRAM refresh request, every 15.085 us.
const REFRESH_NS: u64 = 15_085;
const NS_PER_SEC: u128 = 1_000_000_000;
/// The largest count: a written 0 means 65536.
const MAX_COUNT: u32 = 0x1_0000;
/// Port 0x61 bits stored as written: speaker data (1) and the parity/IOCHK enables (2, 3).
const PORT61_STORED: u8 = 0x0e;

/// Input clock pulses that have happened by virtual time `ns`.
fn ns_to_ticks(ns: u64) -> u64 {
    // u64::MAX ns is about 2.2e16 ticks: always fits.
    (u128::from(ns) * u128::from(PIT_HZ) / NS_PER_SEC) as u64
}

/// The first virtual time at which `ticks` pulses have happened.
fn ticks_to_ns(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * NS_PER_SEC).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// What a channel's counting element is doing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Run {
    /// No count since the last control word (or, in mode 0, counting disabled by the first
    /// byte of a two-byte count). The counter reads `idle_value`.
    Idle,
    /// A count is waiting for a gate rising edge (modes 1 and 5, or 2 and 3 with the gate
    /// low). The counter reads `idle_value`.
    Armed,
    /// Counting: `phase + (tick - load_tick)` input pulses into the count (`phase` is where
    /// counting resumed after a pause, or where a mode-3 half-period reload started).
    Counting {
        /// Input tick at which counting started or resumed.
        load_tick: u64,
        /// Input pulses already into the count at `load_tick`.
        phase: u64,
    },
    /// Stopped by a low gate after `elapsed` pulses.
    Paused {
        /// Input pulses into the count when the gate went low.
        elapsed: u64,
    },
}

/// A count written during counting in mode 2 or 3, loaded at a period boundary.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reload {
    /// The input tick at which it is loaded.
    pub tick: u64,
    /// 1..=65536.
    pub count: u32,
    /// Where in its period it starts (a mode-3 reload at the end of the high half starts
    /// in the low half).
    pub phase: u64,
}

/// Saved state of one counter channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelState {
    /// 0..=5 (6 and 7 are stored as 2 and 3).
    pub mode: u8,
    /// 1 = low byte, 2 = high byte, 3 = low then high.
    pub access: u8,
    /// BCD bit of the control word: stored and reported, but counting is binary.
    pub bcd: bool,
    /// The count register (CR): the last count written, 1..=65536.
    pub count_register: u32,
    /// The count the counting element runs with, 1..=65536.
    pub count: u32,
    /// What the counting element is doing.
    pub run: Run,
    /// Counter value while idle or armed.
    pub idle_value: u16,
    /// A count waiting to be loaded at a period boundary (modes 2 and 3).
    pub reload: Option<Reload>,
    /// NULL COUNT is set until this tick (None: until some future load event).
    pub null_count_until: Option<u64>,
    /// Gate input level: tied high on channels 0 and 1, port 0x61 bit 0 on channel 2.
    pub gate: bool,
    /// Low byte of a low-then-high count write, waiting for the high byte.
    pub write_low: Option<u8>,
    /// The next unlatched low-then-high read returns the high byte.
    pub read_high_next: bool,
    /// Counter value frozen by a latch command.
    pub latched: Option<u16>,
    /// The next read of a low-then-high latched value returns its high byte.
    pub latched_high_next: bool,
    /// Status byte latched by a read-back command (read before the latched count).
    pub status_latched: Option<u8>,
}

/// Pulses counted at tick `k` by an element loaded at `load_tick` with `phase`.
fn counting_elapsed(load_tick: u64, phase: u64, k: u64) -> u64 {
    k.saturating_sub(load_tick).saturating_add(phase)
}

/// The counting element's value `e` pulses after loading `n` in `mode`.
fn counter_value(mode: u8, n: u32, e: u64) -> u16 {
    let n = u64::from(n);
    let value = match mode {
        // Rate generator: n, n-1, .., 1, reload.
        2 => n - e % n,
        // Square wave: decrements by two; an odd count loads n-1 and spends one extra
        // pulse in the high half (high (n+1)/2 pulses, low (n-1)/2).
        3 => {
            let p = e % n;
            let half = n.div_ceil(2);
            let q = if p < half { p } else { p - half };
            (n - n % 2).saturating_sub(2 * q)
        }
        // One-shot modes count down through zero and wrap around.
        _ => n.wrapping_sub(e),
    };
    // 65536 reads as 0, as on the chip.
    value as u16
}

/// The output `e` pulses after loading `n` in `mode`, while counting.
fn output_at(mode: u8, n: u32, e: u64) -> bool {
    let n = u64::from(n);
    match mode {
        // Mode 0 (interrupt on terminal count) and 1 (one-shot): low until the count ends.
        0 | 1 => e >= n,
        // Rate generator: low for the one pulse where the counter is 1.
        2 => e % n != n - 1,
        3 => e % n < n.div_ceil(2),
        // Strobes: low for one pulse when the count ends.
        _ => e != n,
    }
}

/// Whether the output rises at some `e` in `(e1, e2]`.
fn rises_within(mode: u8, n: u32, e1: u64, e2: u64) -> bool {
    let n = u64::from(n);
    match mode {
        0 | 1 => e1 < n && n <= e2,
        2 | 3 => e2 / n > e1 / n,
        _ => e1 <= n && n < e2,
    }
}

/// The first `e' > e` at which the output rises.
fn next_rise(mode: u8, n: u32, e: u64) -> Option<u64> {
    let n = u64::from(n);
    match mode {
        0 | 1 => (e < n).then_some(n),
        2 | 3 => (e / n).checked_add(1)?.checked_mul(n),
        _ => (e <= n).then_some(n + 1),
    }
}

/// The first tick after `after` at which an element counting from `load_tick`/`phase`
/// raises its output.
fn next_edge_tick(mode: u8, n: u32, load_tick: u64, phase: u64, after: u64) -> Option<u64> {
    let e = counting_elapsed(load_tick, phase, after);
    let rise = next_rise(mode, n, e)?;
    Some(load_tick.saturating_add(rise.saturating_sub(phase)))
}

impl ChannelState {
    /// Mode 3, count 65536: what a BIOS programs (channel 0 at 18.2 Hz). Channels with the
    /// gate high are counting since time zero; channel 2 waits for its gate.
    fn bios(gate: bool) -> Self {
        Self {
            mode: 3,
            access: 3,
            bcd: false,
            count_register: MAX_COUNT,
            count: MAX_COUNT,
            run: if gate {
                Run::Counting {
                    load_tick: 0,
                    phase: 0,
                }
            } else {
                Run::Armed
            },
            idle_value: 0,
            reload: None,
            null_count_until: gate.then_some(0),
            gate,
            write_low: None,
            read_high_next: false,
            latched: None,
            latched_high_next: false,
            status_latched: None,
        }
    }

    fn validate(&self, channel: usize) -> Result<(), StateError> {
        let err = |what: String| Err(StateError::new("PIT", format!("channel {channel} {what}")));
        let counts = |n: u32| (1..=MAX_COUNT).contains(&n);
        if self.mode > 5 {
            return err(format!("mode {} (must be 0..=5)", self.mode));
        }
        if !(1..=3).contains(&self.access) {
            return err(format!("access {} (must be 1..=3)", self.access));
        }
        if !counts(self.count_register) {
            return err(format!("count_register {}", self.count_register));
        }
        if !counts(self.count) {
            return err(format!("count {}", self.count));
        }
        let periodic = matches!(self.mode, 2 | 3);
        match self.run {
            Run::Armed if matches!(self.mode, 0 | 4) => {
                return err(format!("run Armed in mode {}", self.mode));
            }
            Run::Counting { phase, .. } if periodic && phase >= u64::from(self.count) => {
                return err(format!("run phase {phase} beyond count {}", self.count));
            }
            _ => {}
        }
        if let Some(r) = self.reload {
            if !periodic || !matches!(self.run, Run::Counting { .. }) {
                return err("reload while not counting in mode 2 or 3".into());
            }
            if !counts(r.count) || r.phase >= u64::from(r.count) {
                return err(format!("reload count {} phase {}", r.count, r.phase));
            }
        }
        if self.access != 3 && (self.write_low.is_some() || self.read_high_next) {
            return err("write_low/read_high_next without low-then-high access".into());
        }
        if self.latched_high_next && (self.latched.is_none() || self.access != 3) {
            return err("latched_high_next without a low-then-high latch".into());
        }
        if channel < 2 && !self.gate {
            return err("gate low (tied high on a PC)".into());
        }
        Ok(())
    }

    fn elapsed(&self, k: u64) -> Option<u64> {
        match self.run {
            Run::Counting { load_tick, phase } => Some(counting_elapsed(load_tick, phase, k)),
            Run::Paused { elapsed } => Some(elapsed),
            Run::Idle | Run::Armed => None,
        }
    }

    fn counter(&self, k: u64) -> u16 {
        match self.elapsed(k) {
            Some(e) => counter_value(self.mode, self.count, e),
            None => self.idle_value,
        }
    }

    fn output(&self, k: u64) -> bool {
        match self.run {
            // After a control word mode 0 starts low, every other mode high.
            Run::Idle => self.mode != 0,
            Run::Armed => true,
            // A low gate forces the output of modes 2 and 3 high.
            Run::Paused { .. } if matches!(self.mode, 2 | 3) => true,
            Run::Paused { elapsed } => output_at(self.mode, self.count, elapsed),
            Run::Counting { load_tick, phase } => {
                output_at(self.mode, self.count, counting_elapsed(load_tick, phase, k))
            }
        }
    }

    fn null_count(&self, k: u64) -> bool {
        self.null_count_until.is_none_or(|until| k < until)
    }

    /// The read-back status byte.
    fn status(&self, k: u64) -> u8 {
        (u8::from(self.output(k)) << 7)
            | (u8::from(self.null_count(k)) << 6)
            | (self.access << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    /// Whether the output rose in `(k1, k2]`, assuming nothing changes in between.
    fn rose_between(&self, k1: u64, k2: u64) -> bool {
        let Run::Counting { load_tick, phase } = self.run else {
            return false;
        };
        let e1 = counting_elapsed(load_tick, phase, k1);
        let e2 = counting_elapsed(load_tick, phase, k2);
        e2 > e1 && rises_within(self.mode, self.count, e1, e2)
    }

    /// A control word with a non-zero access field: new mode, everything else reset.
    fn program(&mut self, value: u8, k: u64) {
        self.idle_value = self.counter(k);
        let mode = (value >> 1) & 7;
        self.mode = if mode >= 6 { mode - 4 } else { mode };
        self.access = (value >> 4) & 3;
        self.bcd = value & 1 != 0;
        self.run = Run::Idle;
        self.reload = None;
        self.null_count_until = None;
        self.write_low = None;
        self.read_high_next = false;
        self.latched = None;
        self.latched_high_next = false;
        self.status_latched = None;
    }

    fn latch_count(&mut self, k: u64) {
        // A second latch before the first is read is ignored.
        if self.latched.is_none() {
            self.latched = Some(self.counter(k));
            self.latched_high_next = false;
        }
    }

    fn write_count(&mut self, value: u8, k: u64) {
        let raw = match self.access {
            1 => u16::from(value),
            2 => u16::from(value) << 8,
            _ => match self.write_low.take() {
                Some(low) => u16::from_le_bytes([low, value]),
                None => {
                    self.write_low = Some(value);
                    if self.mode == 0 {
                        // The first byte of a two-byte count stops mode 0 and drives OUT
                        // low until the count is complete.
                        self.idle_value = self.counter(k);
                        self.run = Run::Idle;
                    }
                    return;
                }
            },
        };
        let count = if raw == 0 { MAX_COUNT } else { u32::from(raw) };
        self.load(count, k);
    }

    /// A complete count was written at tick `k`.
    fn load(&mut self, count: u32, k: u64) {
        self.count_register = count;
        // The count register reaches the counting element on the next input pulse.
        let next = k.saturating_add(1);
        match self.mode {
            0 | 4 => {
                self.count = count;
                self.reload = None;
                self.null_count_until = Some(next);
                self.run = if self.gate {
                    Run::Counting {
                        load_tick: next,
                        phase: 0,
                    }
                } else {
                    Run::Paused { elapsed: 0 }
                };
            }
            1 | 5 => {
                // Loaded by the next gate trigger; a one-shot in progress goes on.
                self.null_count_until = None;
                if self.run == Run::Idle {
                    self.run = Run::Armed;
                }
            }
            _ => match self.run {
                Run::Counting { load_tick, phase } if k >= load_tick => {
                    let e = counting_elapsed(load_tick, phase, k);
                    let n = u64::from(self.count);
                    let (boundary, new_phase) = if self.mode == 2 {
                        // At the end of the current period.
                        ((e / n).saturating_add(1).saturating_mul(n), 0)
                    } else {
                        // At the end of the current half period; after the high half
                        // the new count starts with its low half.
                        let p = e % n;
                        let half = n.div_ceil(2);
                        if p < half {
                            // Phases are taken modulo the count everywhere, and restoring
                            // refuses one >= the count: a count of 1 has no low half, so
                            // it starts its next period (phase 0) instead of phase 1.
                            let low = count.div_ceil(2) % count.max(1);
                            ((e - p).saturating_add(half), u64::from(low))
                        } else {
                            ((e - p).saturating_add(n), 0)
                        }
                    };
                    let tick = load_tick.saturating_add(boundary.saturating_sub(phase));
                    self.reload = Some(Reload {
                        tick,
                        count,
                        phase: new_phase,
                    });
                    self.null_count_until = Some(tick);
                }
                // Written again before the first count reached the element: it replaces it.
                Run::Counting { .. } => self.count = count,
                // Loaded by the gate's next rising edge.
                Run::Paused { .. } => self.null_count_until = None,
                Run::Idle | Run::Armed if self.gate => {
                    self.count = count;
                    self.run = Run::Counting {
                        load_tick: next,
                        phase: 0,
                    };
                    self.null_count_until = Some(next);
                }
                Run::Idle | Run::Armed => {
                    self.run = Run::Armed;
                    self.null_count_until = None;
                }
            },
        }
    }

    /// (Re)load the count register into the element and start counting at tick `at`.
    fn trigger(&mut self, at: u64) {
        self.count = self.count_register;
        self.run = Run::Counting {
            load_tick: at,
            phase: 0,
        };
        self.reload = None;
        if self.null_count_until.is_none_or(|until| until > at) {
            self.null_count_until = Some(at);
        }
    }

    fn set_gate(&mut self, level: bool, k: u64) {
        if self.gate == level {
            return;
        }
        self.gate = level;
        let next = k.saturating_add(1);
        match (self.mode, level) {
            (0 | 4, false) => {
                if let Some(elapsed) = self.elapsed(k) {
                    self.run = Run::Paused { elapsed };
                }
            }
            (0 | 4, true) => {
                if let Run::Paused { elapsed } = self.run {
                    self.run = Run::Counting {
                        load_tick: k,
                        phase: elapsed,
                    };
                }
            }
            (1 | 5, true) => {
                if self.run != Run::Idle {
                    self.trigger(next);
                }
            }
            (1 | 5, false) => {}
            (_, false) => {
                if let Some(elapsed) = self.elapsed(k) {
                    self.run = Run::Paused { elapsed };
                }
                // A count waiting for the period boundary is loaded by the rising edge.
                if self.reload.take().is_some() {
                    self.null_count_until = None;
                }
            }
            (_, true) => {
                if matches!(self.run, Run::Paused { .. } | Run::Armed) {
                    self.trigger(next);
                }
            }
        }
    }

    fn read(&mut self, k: u64) -> u8 {
        if let Some(status) = self.status_latched.take() {
            return status;
        }
        if let Some(value) = self.latched {
            let [low, high] = value.to_le_bytes();
            return match self.access {
                1 => {
                    self.latched = None;
                    low
                }
                2 => {
                    self.latched = None;
                    high
                }
                _ if self.latched_high_next => {
                    self.latched = None;
                    self.latched_high_next = false;
                    high
                }
                _ => {
                    self.latched_high_next = true;
                    low
                }
            };
        }
        let [low, high] = self.counter(k).to_le_bytes();
        match self.access {
            1 => low,
            2 => high,
            _ => {
                let high_now = self.read_high_next;
                self.read_high_next = !high_now;
                if high_now {
                    high
                } else {
                    low
                }
            }
        }
    }
}

/// Saved state of [`Pit`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PitState {
    /// Channels 0, 1 and 2.
    pub channels: [ChannelState; 3],
    /// Channel 0's rising edges are accounted for up to this input tick.
    pub irq0_checked_tick: u64,
    /// Channel 0 rose since the last `poll_irq0`.
    pub irq0_pending: bool,
    /// Port 0x61 bits 1..=3 as last written.
    pub port61: u8,
}

/// The PIT and port 0x61, registered at [`PIT_BASE`] (four ports) and [`PORT_61`].
pub struct Pit {
    channels: [ChannelState; 3],
    irq0_checked_tick: u64,
    irq0_pending: bool,
    port61: u8,
    clock: Arc<dyn Clock>,
}

impl Pit {
    /// The state a PC BIOS leaves: every channel in mode 3 with count 65536, channels 0
    /// and 1 running since time zero (channel 0's IRQ0 at 18.2 Hz), channel 2 gated off.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            channels: [
                ChannelState::bios(true),
                ChannelState::bios(true),
                ChannelState::bios(false),
            ],
            irq0_checked_tick: 0,
            irq0_pending: false,
            port61: 0,
            clock,
        }
    }

    /// Saves the state.
    pub fn state(&self) -> PitState {
        PitState {
            channels: self.channels.clone(),
            irq0_checked_tick: self.irq0_checked_tick,
            irq0_pending: self.irq0_pending,
            port61: self.port61,
        }
    }

    /// Restores a saved state after checking each channel and port 0x61.
    pub fn from_state(state: PitState, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        for (i, ch) in state.channels.iter().enumerate() {
            ch.validate(i)?;
        }
        if state.port61 & !PORT61_STORED != 0 {
            return Err(StateError::new(
                "PIT",
                format!("port61 {:#x} has bits outside 1..=3", state.port61),
            ));
        }
        Ok(Self {
            channels: state.channels,
            irq0_checked_tick: state.irq0_checked_tick,
            irq0_pending: state.irq0_pending,
            port61: state.port61,
            clock,
        })
    }

    /// Whether channel 0's output rose at least once since the last poll. Several missed
    /// periods make one edge, as they would on the PIC's edge-triggered input.
    pub fn poll_irq0(&mut self) -> bool {
        let k = self.now_tick();
        self.advance(k);
        self.settle_irq0(k);
        std::mem::take(&mut self.irq0_pending)
    }

    /// The virtual time at which `poll_irq0` will next return true (in the past if it
    /// already would), for sleeping a halted vCPU; None if channel 0 will not rise again
    /// without being reprogrammed.
    pub fn next_irq0_deadline_ns(&self) -> Option<u64> {
        if self.irq0_pending {
            return Some(ticks_to_ns(self.irq0_checked_tick));
        }
        let ch = &self.channels[0];
        let Run::Counting { load_tick, phase } = ch.run else {
            return None;
        };
        let from = self.irq0_checked_tick;
        let current = next_edge_tick(ch.mode, ch.count, load_tick, phase, from);
        let tick = match ch.reload {
            // The count changes before the next edge of the current one.
            Some(r) if current.is_none_or(|t| t > r.tick) => {
                next_edge_tick(ch.mode, r.count, r.tick, r.phase, from.max(r.tick))
            }
            _ => current,
        }?;
        Some(ticks_to_ns(tick))
    }

    fn now_tick(&self) -> u64 {
        ns_to_ticks(self.clock.now_ns())
    }

    /// Bring the channels up to tick `k`: counts waiting for a period boundary that has
    /// passed take effect at that boundary (after channel 0's edges under the old count
    /// are accounted for), so the result does not depend on when anybody looked.
    fn advance(&mut self, k: u64) {
        for i in 0..self.channels.len() {
            let Some(r) = self.channels[i].reload else {
                continue;
            };
            if r.tick > k {
                continue;
            }
            if i == 0 {
                self.settle_irq0(r.tick);
            }
            let ch = &mut self.channels[i];
            ch.count = r.count;
            ch.run = Run::Counting {
                load_tick: r.tick,
                phase: r.phase,
            };
            ch.reload = None;
        }
    }

    /// Record whether channel 0 rose between the last check and tick `k`.
    fn settle_irq0(&mut self, k: u64) {
        if k > self.irq0_checked_tick {
            if self.channels[0].rose_between(self.irq0_checked_tick, k) {
                self.irq0_pending = true;
            }
            self.irq0_checked_tick = k;
        }
    }

    /// Called before channel `i` changes how it counts at tick `k`: edges up to now were
    /// made by the old programming and must not be lost.
    fn before_change(&mut self, i: usize, k: u64) {
        if i == 0 {
            self.settle_irq0(k);
        }
    }

    fn control(&mut self, value: u8, k: u64) {
        let select = usize::from(value >> 6);
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status, bits 1..=3
            // select the channels.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x10 == 0 && ch.status_latched.is_none() {
                    ch.status_latched = Some(ch.status(k));
                }
                if value & 0x20 == 0 {
                    ch.latch_count(k);
                }
            }
            return;
        }
        if (value >> 4) & 3 == 0 {
            self.channels[select].latch_count(k);
            return;
        }
        self.before_change(select, k);
        self.channels[select].program(value, k);
    }

    fn port61(&self, k: u64, now_ns: u64) -> u8 {
        let ch2 = &self.channels[2];
        let refresh = (now_ns / REFRESH_NS) % 2 == 1;
        u8::from(ch2.gate) | self.port61 | (u8::from(refresh) << 4) | (u8::from(ch2.output(k)) << 5)
    }
}

impl BusDevice for Pit {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        let now_ns = self.clock.now_ns();
        let k = ns_to_ticks(now_ns);
        self.advance(k);
        data[0] = match (base, offset) {
            (PIT_BASE, 0..=2) => self.channels[offset as usize].read(k),
            (PORT_61, 0) => self.port61(k, now_ns),
            // The control word register is write-only.
            _ => 0xff,
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let &[value] = data else { return };
        let k = self.now_tick();
        self.advance(k);
        match (base, offset) {
            (PIT_BASE, 3) => self.control(value, k),
            (PIT_BASE, 0..=2) => {
                let i = offset as usize;
                self.before_change(i, k);
                self.channels[i].write_count(value, k);
            }
            (PORT_61, 0) => {
                self.port61 = value & PORT61_STORED;
                self.before_change(2, k);
                self.channels[2].set_gate(value & 1 != 0, k);
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

    /// Counter latch command, then the two bytes.
    fn read_latched(pit: &mut Pit, ch: u8) -> u16 {
        out(pit, 0x43, ch << 6);
        let lo = inb(pit, 0x40 + u64::from(ch));
        let hi = inb(pit, 0x40 + u64::from(ch));
        u16::from_le_bytes([lo, hi])
    }

    /// Read-back of one channel's status byte.
    fn status(pit: &mut Pit, ch: u8) -> u8 {
        out(pit, 0x43, 0xe0 | (2 << ch));
        inb(pit, 0x40 + u64::from(ch))
    }

    fn at_tick(clock: &FakeClock, k: u64) {
        clock.set(ticks_to_ns(k));
    }

    /// Program channel `ch` in `mode` with a low-then-high `count` at tick `k`.
    fn program(pit: &mut Pit, clock: &FakeClock, k: u64, ch: u8, mode: u8, count: u16) {
        at_tick(clock, k);
        out(pit, 0x43, (ch << 6) | 0x30 | (mode << 1));
        let [lo, hi] = count.to_le_bytes();
        out(pit, 0x40 + u64::from(ch), lo);
        out(pit, 0x40 + u64::from(ch), hi);
    }

    #[test]
    fn tick_conversions_round_trip() {
        for k in [0, 1, 2, 1193, 65536, 1 << 40] {
            assert_eq!(ns_to_ticks(ticks_to_ns(k)), k);
            assert_eq!(
                ns_to_ticks(ticks_to_ns(k).saturating_sub(1)),
                k.saturating_sub(1)
            );
        }
        assert_eq!(ns_to_ticks(1_000_000_000), PIT_HZ);
        let _ = ticks_to_ns(u64::MAX);
    }

    #[test]
    fn bios_channel0_ticks_at_18_hz() {
        let (mut pit, clock) = pit();
        assert!(!pit.poll_irq0());
        let period = ticks_to_ns(65536);
        assert_eq!(pit.next_irq0_deadline_ns(), Some(period));
        assert!((54_925_000..54_926_000).contains(&period), "{period}");
        clock.set(period - 1);
        assert!(!pit.poll_irq0());
        clock.set(period);
        assert!(pit.poll_irq0());
        assert!(!pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(2 * 65536)));
        assert_eq!(
            status(&mut pit, 0),
            0x80 | 0x36,
            "output high, lohi, mode 3"
        );
    }

    #[test]
    fn mode2_rate_generator_period_and_counter() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 10, 0, 2, 1193);
        // Loaded on the pulse after the write (tick 11), then one decrement per pulse.
        at_tick(&clock, 11 + 100);
        assert_eq!(read_latched(&mut pit, 0), 1193 - 100);
        at_tick(&clock, 11 + 1191);
        assert_eq!(read_latched(&mut pit, 0), 2);
        assert_eq!(status(&mut pit, 0) & 0x80, 0x80);
        at_tick(&clock, 11 + 1192);
        assert_eq!(read_latched(&mut pit, 0), 1);
        assert_eq!(
            status(&mut pit, 0) & 0x80,
            0,
            "low for the pulse at count 1"
        );
        assert!(!pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(11 + 1193)));
        at_tick(&clock, 11 + 1193);
        assert_eq!(read_latched(&mut pit, 0), 1193, "reloaded");
        assert_eq!(status(&mut pit, 0) & 0x80, 0x80);
        assert!(pit.poll_irq0());
        assert!(!pit.poll_irq0());
        assert_eq!(
            pit.next_irq0_deadline_ns(),
            Some(ticks_to_ns(11 + 2 * 1193))
        );
        // Missed periods coalesce into one edge.
        at_tick(&clock, 11 + 50 * 1193 + 7);
        assert!(pit.poll_irq0());
        assert!(!pit.poll_irq0());
        assert_eq!(read_latched(&mut pit, 0), 1193 - 7);
    }

    #[test]
    fn mode3_square_wave_even_and_odd() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 3, 100);
        // Even count: high 50 pulses, low 50, counter steps by two.
        for (p, value, high) in [
            (0, 100, true),
            (1, 98, true),
            (49, 2, true),
            (50, 100, false),
        ] {
            at_tick(&clock, 1 + p);
            assert_eq!(read_latched(&mut pit, 0), value, "pulse {p}");
            assert_eq!(status(&mut pit, 0) & 0x80 != 0, high, "pulse {p}");
        }
        at_tick(&clock, 1 + 99);
        assert_eq!(read_latched(&mut pit, 0), 2);
        assert!(!pit.poll_irq0());
        at_tick(&clock, 1 + 100);
        assert!(pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(1 + 200)));

        // Odd count 5: loads 4, high for 3 pulses, low for 2.
        program(&mut pit, &clock, 1000, 0, 3, 5);
        let expected = [
            (4, true),
            (2, true),
            (0, true),
            (4, false),
            (2, false),
            (4, true),
        ];
        for (p, (value, high)) in expected.into_iter().enumerate() {
            at_tick(&clock, 1001 + p as u64);
            assert_eq!(read_latched(&mut pit, 0), value, "pulse {p}");
            assert_eq!(status(&mut pit, 0) & 0x80 != 0, high, "pulse {p}");
        }
    }

    #[test]
    fn mode0_one_shot_and_null_count() {
        let (mut pit, clock) = pit();
        at_tick(&clock, 100);
        out(&mut pit, 0x43, 0x30);
        assert_eq!(
            status(&mut pit, 0),
            0x70,
            "output low, null count, lohi, mode 0"
        );
        out(&mut pit, 0x40, 10);
        out(&mut pit, 0x40, 0);
        assert_eq!(status(&mut pit, 0) & 0x40, 0x40, "not loaded yet");
        at_tick(&clock, 101);
        assert_eq!(status(&mut pit, 0) & 0xc0, 0, "loaded: null count clear");
        assert_eq!(read_latched(&mut pit, 0), 10);
        at_tick(&clock, 110);
        assert_eq!(read_latched(&mut pit, 0), 1);
        assert!(!pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(111)));
        at_tick(&clock, 111);
        assert_eq!(status(&mut pit, 0) & 0x80, 0x80, "terminal count");
        assert!(pit.poll_irq0());
        // The counter wraps and goes on; the output stays high and never rises again.
        at_tick(&clock, 112);
        assert_eq!(read_latched(&mut pit, 0), 0xffff);
        at_tick(&clock, 1_000_000);
        assert!(!pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), None);
    }

    #[test]
    fn mode0_first_byte_stops_counting() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 0, 1000);
        at_tick(&clock, 101);
        out(&mut pit, 0x40, 0x34);
        at_tick(&clock, 500);
        assert_eq!(read_latched(&mut pit, 0), 900, "frozen");
        assert_eq!(status(&mut pit, 0) & 0x80, 0);
        out(&mut pit, 0x40, 0x12);
        at_tick(&clock, 511);
        assert_eq!(read_latched(&mut pit, 0), 0x1234 - 10);
    }

    #[test]
    fn mode4_strobe_is_one_pulse_low() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 4, 20);
        at_tick(&clock, 20);
        assert_eq!(status(&mut pit, 0) & 0x80, 0x80);
        at_tick(&clock, 21);
        assert_eq!(status(&mut pit, 0) & 0x80, 0, "strobe");
        assert!(!pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(22)));
        at_tick(&clock, 22);
        assert_eq!(status(&mut pit, 0) & 0x80, 0x80);
        assert!(pit.poll_irq0());
    }

    #[test]
    fn new_count_in_mode2_waits_for_the_period_end() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 2, 100);
        at_tick(&clock, 31);
        out(&mut pit, 0x40, 50);
        out(&mut pit, 0x40, 0);
        assert_eq!(
            status(&mut pit, 0) & 0x40,
            0x40,
            "null count until the reload"
        );
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(101)));
        at_tick(&clock, 100);
        assert_eq!(
            read_latched(&mut pit, 0),
            1,
            "old count finishes its period"
        );
        at_tick(&clock, 101);
        assert_eq!(status(&mut pit, 0) & 0x40, 0);
        assert_eq!(read_latched(&mut pit, 0), 50);
        assert!(pit.poll_irq0());
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(151)));
        at_tick(&clock, 151);
        assert!(pit.poll_irq0());
    }

    #[test]
    fn new_count_in_mode3_waits_for_the_half_period_end() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 3, 100);
        at_tick(&clock, 11);
        out(&mut pit, 0x40, 20);
        out(&mut pit, 0x40, 0);
        // The high half of the old count ends at 51; the new count starts low there.
        at_tick(&clock, 50);
        assert_eq!(status(&mut pit, 0) & 0xc0, 0xc0);
        at_tick(&clock, 51);
        assert_eq!(status(&mut pit, 0) & 0xc0, 0, "low half of the new count");
        assert_eq!(read_latched(&mut pit, 0), 20);
        assert_eq!(pit.next_irq0_deadline_ns(), Some(ticks_to_ns(61)));
        at_tick(&clock, 61);
        assert!(pit.poll_irq0());
        assert_eq!(status(&mut pit, 0) & 0x80, 0x80);
    }

    /// Found by the device_states fuzz target: a count of 1 written during the high half
    /// of a mode-3 period was queued to start "in its low half" at phase 1, a phase its
    /// own validation refuses (a count of 1 has no low half), so the saved state could not
    /// be restored on the backup, and once loaded the element ran at that phase too.
    #[test]
    fn mode3_reload_of_count_1_saves_a_restorable_state() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 3, 4);
        at_tick(&clock, 1);
        out(&mut pit, 0x40, 1);
        out(&mut pit, 0x40, 0);
        let saved = pit.state();
        assert!(Pit::from_state(saved, clock.clone()).is_ok());
        // After the reload has reached the counting element too.
        at_tick(&clock, 10);
        let mut b = [0];
        pit.read(PIT_BASE, 0, &mut b);
        assert!(Pit::from_state(pit.state(), clock.clone()).is_ok());
    }

    #[test]
    fn an_edge_is_not_lost_when_the_guest_reprograms_before_the_poll() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 0, 10);
        program(&mut pit, &clock, 50, 0, 0, 10);
        assert!(pit.poll_irq0(), "the first one-shot fired at tick 11");
        assert!(!pit.poll_irq0());
    }

    #[test]
    fn latch_freezes_the_count_until_read() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 2, 1000);
        at_tick(&clock, 101);
        out(&mut pit, 0x43, 0x00);
        at_tick(&clock, 301);
        out(&mut pit, 0x43, 0x00); // ignored: already latched
        assert_eq!(inb(&mut pit, 0x40), (900 & 0xff) as u8);
        at_tick(&clock, 401);
        assert_eq!(inb(&mut pit, 0x40), (900 >> 8) as u8);
        // Unlatched reads follow the counter, alternating low and high bytes.
        assert_eq!(inb(&mut pit, 0x40), (600 & 0xff) as u8);
        assert_eq!(inb(&mut pit, 0x40), (600 >> 8) as u8);
    }

    #[test]
    fn readback_latches_status_then_count() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 1, 2, 300);
        at_tick(&clock, 101);
        out(&mut pit, 0x43, 0xc4); // count and status of channel 1
        at_tick(&clock, 201);
        assert_eq!(inb(&mut pit, 0x41), 0xb4, "output high, lohi, mode 2");
        assert_eq!(inb(&mut pit, 0x41), 200);
        assert_eq!(inb(&mut pit, 0x41), 0);
    }

    #[test]
    fn lobyte_and_hibyte_access() {
        let (mut pit, clock) = pit();
        out(&mut pit, PORT_61, 1); // channel 2 gate on
        out(&mut pit, 0x43, 0x94); // channel 2, lobyte, mode 2
        out(&mut pit, 0x42, 200);
        at_tick(&clock, 51);
        assert_eq!(inb(&mut pit, 0x42), 150);
        assert_eq!(inb(&mut pit, 0x42), 150, "lobyte only: no toggling");
        out(&mut pit, 0x43, 0xa4); // channel 2, hibyte, mode 2
        out(&mut pit, 0x42, 2);
        at_tick(&clock, 52 + 255);
        out(&mut pit, 0x43, 0x80); // latch channel 2: 512 - 255 = 0x101
        at_tick(&clock, 52 + 300);
        assert_eq!(inb(&mut pit, 0x42), 1, "latched high byte");
        assert_eq!(inb(&mut pit, 0x42), 0, "live high byte of 512 - 300");
    }

    #[test]
    fn port61_gate_speaker_refresh_and_output() {
        let (mut pit, clock) = pit();
        assert_eq!(inb(&mut pit, PORT_61) & 0x01, 0);
        clock.set(REFRESH_NS);
        let a = inb(&mut pit, PORT_61) & 0x10;
        clock.set(2 * REFRESH_NS);
        let b = inb(&mut pit, PORT_61) & 0x10;
        assert_ne!(a, b, "refresh bit toggles");
        out(&mut pit, PORT_61, 0xff);
        assert_eq!(
            inb(&mut pit, PORT_61) & 0xcf,
            0x0f,
            "gate, speaker, enables"
        );

        // Channel 2 mode 0, gated: the way PC software times short delays.
        out(&mut pit, PORT_61, 0);
        let k = ns_to_ticks(clock.now_ns());
        program(&mut pit, &clock, k, 2, 0, 10);
        at_tick(&clock, k + 100);
        assert_eq!(read_latched(&mut pit, 2), 10, "gate low: paused");
        out(&mut pit, PORT_61, 1);
        at_tick(&clock, k + 109);
        assert_eq!(inb(&mut pit, PORT_61) & 0x20, 0);
        out(&mut pit, PORT_61, 0);
        at_tick(&clock, k + 200);
        assert_eq!(read_latched(&mut pit, 2), 1, "paused at 1");
        out(&mut pit, PORT_61, 1);
        at_tick(&clock, k + 201);
        assert_eq!(inb(&mut pit, PORT_61) & 0x20, 0x20, "terminal count");
        assert!(!pit.poll_irq0(), "channel 2 is not IRQ0");
    }

    #[test]
    fn gate_stops_mode3_and_forces_output_high() {
        let (mut pit, clock) = pit();
        out(&mut pit, PORT_61, 1);
        program(&mut pit, &clock, 0, 2, 3, 10);
        at_tick(&clock, 7);
        assert_eq!(inb(&mut pit, PORT_61) & 0x20, 0, "low half");
        out(&mut pit, PORT_61, 0);
        assert_eq!(inb(&mut pit, PORT_61) & 0x20, 0x20, "gate low: output high");
        at_tick(&clock, 50);
        out(&mut pit, PORT_61, 1); // reload on the next pulse
        at_tick(&clock, 51);
        assert_eq!(read_latched(&mut pit, 2), 10);
        at_tick(&clock, 56);
        assert_eq!(inb(&mut pit, PORT_61) & 0x20, 0);
    }

    #[test]
    fn mode1_one_shot_is_triggered_by_the_gate() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 2, 1, 30);
        at_tick(&clock, 100);
        assert_eq!(
            status(&mut pit, 2) & 0xc0,
            0xc0,
            "armed: output high, null count"
        );
        out(&mut pit, PORT_61, 1);
        at_tick(&clock, 101);
        assert_eq!(
            status(&mut pit, 2) & 0xc0,
            0,
            "triggered: output low, loaded"
        );
        at_tick(&clock, 130);
        assert_eq!(status(&mut pit, 2) & 0x80, 0);
        at_tick(&clock, 131);
        assert_eq!(status(&mut pit, 2) & 0x80, 0x80);
        // Retrigger.
        out(&mut pit, PORT_61, 0);
        out(&mut pit, PORT_61, 1);
        at_tick(&clock, 140);
        assert_eq!(status(&mut pit, 2) & 0x80, 0);
        assert_eq!(read_latched(&mut pit, 2), 30 - 8);
    }

    #[test]
    fn state_round_trips_and_restored_timer_behaves_the_same() {
        let (mut pit, clock) = pit();
        program(&mut pit, &clock, 0, 0, 2, 100);
        at_tick(&clock, 31);
        out(&mut pit, 0x40, 50); // reload pending
        out(&mut pit, 0x40, 0);
        out(&mut pit, 0x43, 0x00); // latched count pending
        out(&mut pit, PORT_61, 0x03);
        let json = serde_json::to_string(&pit.state()).unwrap();
        let mut restored =
            Pit::from_state(serde_json::from_str(&json).unwrap(), clock.clone()).unwrap();
        assert_eq!(restored.state(), pit.state());
        for k in [40, 99, 100, 101, 130, 151, 1000, 1001] {
            at_tick(&clock, k);
            assert_eq!(restored.poll_irq0(), pit.poll_irq0(), "tick {k}");
            assert_eq!(
                restored.next_irq0_deadline_ns(),
                pit.next_irq0_deadline_ns()
            );
            for port in [0x40, 0x40, 0x42, PORT_61] {
                assert_eq!(inb(&mut restored, port), inb(&mut pit, port), "tick {k}");
            }
        }
    }

    #[test]
    fn invalid_states_are_rejected() {
        let (pit, clock) = pit();
        type Corrupt = fn(&mut PitState);
        let cases: [(Corrupt, &str); 8] = [
            (|s| s.channels[1].count = 0, "count 0"),
            (|s| s.channels[0].count_register = 70_000, "count_register"),
            (|s| s.channels[0].mode = 7, "mode 7"),
            (|s| s.channels[2].access = 0, "access 0"),
            (|s| s.channels[0].gate = false, "gate"),
            (|s| s.port61 = 0x10, "port61"),
            (
                |s| {
                    s.channels[0].reload = Some(Reload {
                        tick: 5,
                        count: 0,
                        phase: 0,
                    })
                },
                "reload",
            ),
            (
                |s| {
                    s.channels[0].run = Run::Counting {
                        load_tick: 0,
                        phase: 1 << 20,
                    }
                },
                "phase",
            ),
        ];
        for (corrupt, what) in cases {
            let mut bad = pit.state();
            corrupt(&mut bad);
            let err = Pit::from_state(bad, clock.clone()).err().unwrap();
            assert!(err.reason.contains(what), "{err}");
        }
    }

    #[test]
    fn survives_random_access() {
        let (mut pit, clock) = pit();
        clock.set(123_456_789);
        crate::testing::hammer(&mut pit, &[PIT_BASE, PORT_61], 4, Some(&clock));
        let _ = pit.poll_irq0();
        let _ = pit.next_irq0_deadline_ns();
        assert!(Pit::from_state(pit.state(), clock.clone()).is_ok());
        // Time far in the future and running backwards must not break anything either.
        clock.set(u64::MAX);
        let _ = pit.poll_irq0();
        let _ = pit.next_irq0_deadline_ns();
        let mut b = [0];
        pit.read(PIT_BASE, 0, &mut b);
        clock.set(0);
        let _ = pit.poll_irq0();
        pit.read(PORT_61, 0, &mut b);
    }
}
