//! The dual i8259A programmable interrupt controller (master at 0x20, slave at 0xa0,
//! cascaded on master IRQ2) and the ELCR edge/level registers at 0x4d0.

use serde::{Deserialize, Serialize};

use crate::{BusDevice, StateError};

pub const MASTER_BASE: u64 = 0x20;
pub const SLAVE_BASE: u64 = 0xa0;
pub const ELCR_BASE: u64 = 0x4d0;

/// One 8259A chip.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChipState {
    pub irr: u8,
    pub isr: u8,
    pub imr: u8,
    /// Input levels last seen (edge detection).
    pub last_level: u8,
    pub vector_base: u8,
    /// Lowest-priority line (priority rotates after it).
    pub priority_add: u8,
    /// Which ICW comes next during initialisation (0 = not initialising).
    pub init_step: u8,
    pub needs_icw4: bool,
    pub single: bool,
    pub auto_eoi: bool,
    pub rotate_on_auto_eoi: bool,
    pub read_isr: bool,
    pub poll: bool,
    pub special_mask: bool,
    /// Edge/level control (ELCR): 1 = level triggered.
    pub elcr: u8,
}

impl ChipState {
    fn bios(vector_base: u8) -> Self {
        Self {
            imr: 0xff,
            vector_base,
            ..Default::default()
        }
    }

    /// Highest-priority bit set in `mask`, as a line number, honouring rotation.
    fn priority(&self, mask: u8) -> Option<u8> {
        (0..8u8)
            .map(|i| (i + self.priority_add) & 7)
            .find(|&line| mask & (1 << line) != 0)
    }

    /// The line that should interrupt the CPU now, if any.
    fn pending(&self) -> Option<u8> {
        let requested = self.irr & !self.imr;
        let line = self.priority(requested)?;
        // In-service lines of equal or higher priority block it (unless special mask mode,
        // where only the line itself is blocked).
        let in_service = if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        };
        match self.priority(in_service) {
            Some(busy) if self.rank(busy) <= self.rank(line) => None,
            _ => Some(line),
        }
    }

    fn rank(&self, line: u8) -> u8 {
        line.wrapping_sub(self.priority_add) & 7
    }

    fn set_level(&mut self, line: u8, level: bool) {
        let bit = 1u8 << line;
        if self.elcr & bit != 0 {
            // Level triggered: IRR follows the line.
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.last_level & bit == 0 {
            self.irr |= bit;
        }
        if level {
            self.last_level |= bit;
        } else {
            self.last_level &= !bit;
        }
    }

    /// INTA for `line`: move it from IRR to ISR (edge lines) and handle auto-EOI.
    fn ack(&mut self, line: u8) {
        let bit = 1u8 << line;
        if self.elcr & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (line + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: start initialisation.
            *self = Self {
                elcr: self.elcr,
                vector_base: self.vector_base,
                needs_icw4: value & 1 != 0,
                single: value & 2 != 0,
                init_step: 2,
                ..Default::default()
            };
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            // OCW2: end of interrupt and rotation.
            let line = value & 7;
            match value >> 5 {
                0b001 | 0b101 => {
                    // Non-specific EOI (optionally rotating): the highest in service.
                    if let Some(served) = self.priority(self.isr) {
                        self.isr &= !(1 << served);
                        if value >> 5 == 0b101 {
                            self.priority_add = (served + 1) & 7;
                        }
                    }
                }
                0b011 => self.isr &= !(1 << line),
                0b111 => {
                    self.isr &= !(1 << line);
                    self.priority_add = (line + 1) & 7;
                }
                0b110 => self.priority_add = (line + 1) & 7,
                0b100 => self.rotate_on_auto_eoi = true,
                0b000 => self.rotate_on_auto_eoi = false,
                _ => {}
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            2 => {
                self.vector_base = value & 0xf8;
                self.init_step = if !self.single {
                    3
                } else if self.needs_icw4 {
                    4
                } else {
                    0
                };
            }
            3 => self.init_step = if self.needs_icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.init_step = 0;
            }
            _ => self.imr = value,
        }
    }

    /// Poll command: acknowledge the highest request and report it.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending() {
            Some(line) => {
                self.ack(line);
                0x80 | line
            }
            None => 0,
        }
    }

    fn read(&mut self, offset: u64) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        match offset {
            0 if self.read_isr => self.isr,
            0 => self.irr,
            _ => self.imr,
        }
    }

    fn validate(&self, name: &'static str) -> Result<(), StateError> {
        if self.priority_add > 7 {
            return Err(StateError::new(name, "priority_add above 7"));
        }
        if !matches!(self.init_step, 0 | 2 | 3 | 4) {
            return Err(StateError::new(
                name,
                format!("init_step {}", self.init_step),
            ));
        }
        if self.vector_base & 7 != 0 {
            return Err(StateError::new(name, "vector_base not a multiple of 8"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PicState {
    pub master: ChipState,
    pub slave: ChipState,
}

/// The PIC pair.
#[derive(Debug)]
pub struct Pic {
    master: ChipState,
    slave: ChipState,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// The state a PC BIOS leaves: both chips masked, vectors 0x08 and 0x70.
    pub fn new() -> Self {
        Self {
            master: ChipState::bios(0x08),
            slave: ChipState::bios(0x70),
        }
    }

    pub fn state(&self) -> PicState {
        PicState {
            master: self.master.clone(),
            slave: self.slave.clone(),
        }
    }

    pub fn from_state(state: PicState) -> Result<Self, StateError> {
        state.master.validate("PIC master")?;
        state.slave.validate("PIC slave")?;
        Ok(Self {
            master: state.master,
            slave: state.slave,
        })
    }

    /// An edge on ISA line `irq` (0..16).
    pub fn raise_irq(&mut self, irq: u8) {
        self.set_irq_level(irq, true);
        self.set_irq_level(irq, false);
    }

    /// Drive ISA line `irq` to `level`. Lines outside 0..16 are ignored.
    pub fn set_irq_level(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 => self.master.set_level(irq, level),
            8..=15 => {
                self.slave.set_level(irq - 8, level);
                self.update_cascade();
            }
            _ => {}
        }
    }

    /// The slave's output drives master line 2.
    fn update_cascade(&mut self) {
        let out = self.slave.pending().is_some();
        // The cascade line behaves as a level: it stays up while the slave asks.
        if out {
            self.master.irr |= 1 << 2;
        } else if self.master.elcr & (1 << 2) == 0 {
            self.master.irr &= !(1 << 2);
        }
    }

    /// Whether an unmasked request would interrupt the CPU now.
    pub fn has_pending_interrupt(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The INTA cycle: acknowledge the highest-priority request and return its vector.
    /// A request that vanished yields the spurious vector (line 7 of the chip).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let line = self.master.pending()?;
        self.master.ack(line);
        if line == 2 {
            let vector = match self.slave.pending() {
                Some(sl) => {
                    self.slave.ack(sl);
                    self.slave.vector_base.wrapping_add(sl)
                }
                None => self.slave.vector_base.wrapping_add(7),
            };
            self.update_cascade();
            return Some(vector);
        }
        Some(self.master.vector_base.wrapping_add(line))
    }
}

impl BusDevice for Pic {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match base {
            MASTER_BASE => self.master.read(offset),
            SLAVE_BASE => {
                let v = self.slave.read(offset);
                self.update_cascade();
                v
            }
            ELCR_BASE if offset == 0 => self.master.elcr,
            ELCR_BASE => self.slave.elcr,
            _ => 0xff,
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        let value = *value;
        match (base, offset) {
            (MASTER_BASE, 0) => self.master.write_command(value),
            (MASTER_BASE, _) => self.master.write_data(value),
            (SLAVE_BASE, 0) => self.slave.write_command(value),
            (SLAVE_BASE, _) => self.slave.write_data(value),
            // IRQ 0, 1, 2, 8 and 13 are always edge triggered on a PC.
            (ELCR_BASE, 0) => self.master.elcr = value & 0xf8,
            (ELCR_BASE, _) => self.slave.elcr = value & 0xde,
            _ => {}
        }
        if base == SLAVE_BASE || base == ELCR_BASE {
            self.update_cascade();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(pic: &mut Pic, port: u64, v: u8) {
        let base = port & !1;
        pic.write(base, port - base, &[v]);
    }

    fn inb(pic: &mut Pic, port: u64) -> u8 {
        let base = port & !1;
        let mut b = [0];
        pic.read(base, port - base, &mut b);
        b[0]
    }

    /// The initialisation every OS does: vectors 0x20/0x28, cascade, 8086 mode.
    fn init(pic: &mut Pic, auto_eoi: bool) {
        let icw4 = if auto_eoi { 3 } else { 1 };
        for (port, v) in [
            (0x20, 0x11),
            (0xa0, 0x11),
            (0x21, 0x20),
            (0xa1, 0x28),
            (0x21, 4),
            (0xa1, 2),
            (0x21, icw4),
            (0xa1, icw4),
        ] {
            out(pic, port, v);
        }
        out(pic, 0x21, 0);
        out(pic, 0xa1, 0);
    }

    #[test]
    fn bios_state_masks_everything() {
        let mut pic = Pic::new();
        pic.raise_irq(0);
        assert!(!pic.has_pending_interrupt());
        assert_eq!(inb(&mut pic, 0x21), 0xff);
    }

    #[test]
    fn delivers_by_priority_and_eoi() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(4);
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        // IRQ4 waits behind IRQ0 in service.
        assert!(!pic.has_pending_interrupt());
        out(&mut pic, 0x20, 0x20); // non-specific EOI
        assert_eq!(pic.acknowledge(), Some(0x24));
        out(&mut pic, 0x20, 0x64); // specific EOI for line 4
        assert!(!pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), None);
    }

    #[test]
    fn higher_priority_preempts_lower_in_service() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(4);
        assert_eq!(pic.acknowledge(), Some(0x24));
        pic.raise_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x21));
    }

    #[test]
    fn slave_lines_cascade_through_irq2() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(8 + 3);
        assert!(pic.has_pending_interrupt());
        assert_eq!(pic.acknowledge(), Some(0x2b));
        out(&mut pic, 0xa0, 0x20);
        out(&mut pic, 0x20, 0x20);
        assert!(!pic.has_pending_interrupt());
    }

    #[test]
    fn masked_lines_wait_and_irr_isr_are_readable() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        out(&mut pic, 0x21, 0x01);
        pic.raise_irq(0);
        assert!(!pic.has_pending_interrupt());
        assert_eq!(inb(&mut pic, 0x20), 0x01); // IRR by default
        out(&mut pic, 0x21, 0x00);
        assert_eq!(pic.acknowledge(), Some(0x20));
        out(&mut pic, 0x20, 0x0b); // OCW3: read ISR
        assert_eq!(inb(&mut pic, 0x20), 0x01);
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let mut pic = Pic::new();
        init(&mut pic, true);
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
    }

    #[test]
    fn poll_command_acknowledges() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(5);
        out(&mut pic, 0x20, 0x0c);
        assert_eq!(inb(&mut pic, 0x20), 0x85);
        out(&mut pic, 0x20, 0x0c);
        assert_eq!(inb(&mut pic, 0x20), 0x00);
    }

    #[test]
    fn level_triggered_lines_follow_the_level() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.write(ELCR_BASE, 0, &[0x20]);
        pic.set_irq_level(5, true);
        assert_eq!(pic.acknowledge(), Some(0x25));
        out(&mut pic, 0x20, 0x20);
        assert!(pic.has_pending_interrupt(), "still asserted");
        pic.set_irq_level(5, false);
        assert!(!pic.has_pending_interrupt());
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(3);
        let state = pic.state();
        let json = serde_json::to_string(&state).unwrap();
        let mut restored = Pic::from_state(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(restored.acknowledge(), pic.acknowledge());
        let mut bad = pic.state();
        bad.slave.priority_add = 9;
        assert!(Pic::from_state(bad).is_err());
        let mut bad = pic.state();
        bad.master.init_step = 1;
        assert!(Pic::from_state(bad).is_err());
    }

    #[test]
    fn survives_random_access() {
        let mut pic = Pic::new();
        crate::testing::hammer(&mut pic, &[MASTER_BASE, SLAVE_BASE, ELCR_BASE], 2);
        for irq in 0..20 {
            pic.raise_irq(irq);
            let _ = pic.acknowledge();
        }
    }
}
