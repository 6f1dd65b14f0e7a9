//! The dual i8259A programmable interrupt controller (master at 0x20, slave at 0xa0,
//! cascaded on master IRQ2) and the ELCR edge/level registers at 0x4d0.
//!
//! The model follows the 8259A data sheet: ICW1..ICW4 initialisation, OCW1 (mask),
//! OCW2 (EOI and rotation), OCW3 (register select, poll, special mask mode), priority
//! resolution with rotation, special fully nested mode on the master, auto-EOI, and the
//! spurious IRQ7/IRQ15 vectors when a request vanished before the INTA cycle.
//!
//! The slave's INT output drives master input 2 as a line level, re-evaluated after every
//! operation, so the master sees the slave exactly as the wiring of a PC would show it.

use serde::{Deserialize, Serialize};

use crate::{BusDevice, StateError};

/// The master 8259A's ports: command (0x20) and data (0x21).
pub const MASTER_BASE: u64 = 0x20;
/// The slave 8259A's ports: command (0xa0) and data (0xa1).
pub const SLAVE_BASE: u64 = 0xa0;
/// The ELCR registers: master lines at 0x4d0, slave lines at 0x4d1.
pub const ELCR_BASE: u64 = 0x4d0;

/// The master input the slave's output is wired to.
const CASCADE_LINE: u8 = 2;
/// On a PC, IRQ0, IRQ1 and IRQ2 (master) and IRQ8 and IRQ13 (slave) are always edge
/// triggered: their ELCR bits read as zero.
const MASTER_ELCR_MASK: u8 = 0xf8;
const SLAVE_ELCR_MASK: u8 = 0xde;
/// The BIOS vector bases (real-mode IVT layout).
const BIOS_MASTER_VECTORS: u8 = 0x08;
const BIOS_SLAVE_VECTORS: u8 = 0x70;

/// One 8259A chip.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChipState {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// Input levels last seen, for edge detection (and the level of level-triggered lines).
    pub last_level: u8,
    /// Vector of line 0 (ICW2), a multiple of 8.
    pub vector_base: u8,
    /// The line with the highest priority (0..=7); rotation moves it.
    pub priority_add: u8,
    /// Which ICW comes next during initialisation: 0 = initialised, 2, 3 or 4.
    pub init_step: u8,
    /// ICW1 announced an ICW4.
    pub needs_icw4: bool,
    /// ICW1 single mode (no cascade: no ICW3, master line 2 is a plain input).
    pub single: bool,
    /// ICW4 auto-EOI: the INTA cycle does not set the ISR bit.
    pub auto_eoi: bool,
    /// OCW2 "rotate in auto-EOI mode".
    pub rotate_on_auto_eoi: bool,
    /// ICW4 special fully nested mode (meaningful on the master).
    pub special_fully_nested: bool,
    /// OCW3 register select: reads of the command port return the ISR instead of the IRR.
    pub read_isr: bool,
    /// OCW3 poll command issued: the next read is the poll word.
    pub poll: bool,
    /// OCW3 special mask mode.
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

    /// Highest-priority line set in `mask`, honouring rotation.
    fn priority(&self, mask: u8) -> Option<u8> {
        (0..8u8)
            .map(|i| (i + self.priority_add) & 7)
            .find(|&line| mask & (1 << line) != 0)
    }

    /// Priority rank of `line`: 0 is the highest.
    fn rank(&self, line: u8) -> u8 {
        line.wrapping_sub(self.priority_add) & 7
    }

    /// The line that should interrupt the CPU now, if any (the chip's INT output).
    /// `is_master` enables special fully nested mode, which only exists on the master.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let line = self.priority(self.irr & !self.imr)?;
        // Lines in service of equal or higher priority block the request. In special mask
        // mode a masked in-service line does not block; in special fully nested mode the
        // cascade line does not block, so a higher-priority slave request can nest.
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if is_master && self.special_fully_nested && !self.single {
            in_service &= !(1 << CASCADE_LINE);
        }
        match self.priority(in_service) {
            Some(busy) if self.rank(busy) <= self.rank(line) => None,
            _ => Some(line),
        }
    }

    fn set_level(&mut self, line: u8, level: bool) {
        let bit = 1u8 << (line & 7);
        if self.elcr & bit != 0 {
            // Level triggered: IRR follows the line.
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.last_level & bit == 0 {
            // Edge triggered: latch the rising edge.
            self.irr |= bit;
        }
        if level {
            self.last_level |= bit;
        } else {
            self.last_level &= !bit;
        }
    }

    /// The INTA cycle for `line`: clear the request (edge lines only: a level line stays
    /// requested while asserted) and mark it in service unless in auto-EOI mode.
    fn ack(&mut self, line: u8) {
        let bit = 1u8 << (line & 7);
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

    /// ICW1: restart initialisation. The edge detectors are reset (an edge line must go
    /// low and high again), the IMR and ISR are cleared, line 7 gets the lowest priority,
    /// register select goes back to IRR and special mask mode ends. Level-triggered lines
    /// keep their request since they are still asserted; the ELCR is a separate register.
    fn icw1(&mut self, value: u8) {
        let level_lines = self.last_level & self.elcr;
        *self = Self {
            irr: self.irr & level_lines,
            last_level: level_lines,
            elcr: self.elcr,
            vector_base: self.vector_base,
            needs_icw4: value & 0x01 != 0,
            single: value & 0x02 != 0,
            // ICW1 bit 3 (LTIM, all lines level triggered) is not modelled: PCs use the
            // ELCR instead, and no PC OS sets it.
            init_step: 2,
            ..Default::default()
        };
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
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
            // OCW2: R, SL, EOI in bits 7..5, the line for the specific forms in bits 2..0.
            let line = value & 7;
            match value >> 5 {
                // Non-specific EOI, optionally rotating: ends the highest in service.
                0b001 | 0b101 => {
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
                // Set priority: `line` becomes the lowest.
                0b110 => self.priority_add = (line + 1) & 7,
                0b100 => self.rotate_on_auto_eoi = true,
                0b000 => self.rotate_on_auto_eoi = false,
                _ => {} // 0b010: no operation
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            2 => {
                // ICW2: the vector base (the low 3 bits are the line number).
                self.vector_base = value & 0xf8;
                self.init_step = if !self.single {
                    3
                } else if self.needs_icw4 {
                    4
                } else {
                    0
                };
            }
            // ICW3: the cascade wiring, fixed on a PC; nothing to store.
            3 => self.init_step = if self.needs_icw4 { 4 } else { 0 },
            4 => {
                // ICW4: bit 1 auto-EOI, bit 4 special fully nested mode. Bit 0 (8086
                // mode) and the buffered-mode bits change nothing for a PC.
                self.auto_eoi = value & 0x02 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                self.init_step = 0;
            }
            // OCW1.
            _ => self.imr = value,
        }
    }

    /// Poll command: the read acts as an INTA and returns 0x80 | line, or 0 when nothing
    /// is requesting.
    fn poll_read(&mut self, is_master: bool) -> u8 {
        self.poll = false;
        match self.pending(is_master) {
            Some(line) => {
                self.ack(line);
                0x80 | line
            }
            None => 0,
        }
    }

    fn read(&mut self, offset: u64, is_master: bool) -> u8 {
        if self.poll {
            return self.poll_read(is_master);
        }
        match offset {
            0 if self.read_isr => self.isr,
            0 => self.irr,
            _ => self.imr,
        }
    }

    fn validate(&self, name: &'static str, elcr_mask: u8) -> Result<(), StateError> {
        if self.priority_add > 7 {
            return Err(StateError::new(
                name,
                format!("priority_add {} above 7", self.priority_add),
            ));
        }
        if !matches!(self.init_step, 0 | 2 | 3 | 4) {
            return Err(StateError::new(
                name,
                format!("init_step {}", self.init_step),
            ));
        }
        if self.vector_base & 7 != 0 {
            return Err(StateError::new(
                name,
                format!("vector_base {:#x} not a multiple of 8", self.vector_base),
            ));
        }
        if self.elcr & !elcr_mask != 0 {
            return Err(StateError::new(
                name,
                format!("elcr {:#x} marks an always-edge line as level", self.elcr),
            ));
        }
        Ok(())
    }
}

/// Saved state of [`Pic`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PicState {
    /// The master chip: ISA lines 0..8.
    pub master: ChipState,
    /// The slave chip: ISA lines 8..16, cascaded on master line 2.
    pub slave: ChipState,
}

impl PicState {
    /// Undo the acknowledge (INTA) of `vector` in a saved state: the request goes back from
    /// in-service to requested, as if the CPU had never taken it. A VMM saving a vCPU that
    /// was handed an interrupt it has not taken yet gives it back this way, so a restored
    /// machine delivers it again instead of depending on the host to keep the injection.
    /// Returns false if `vector` is not one of this PIC's.
    pub fn give_back(&mut self, vector: u8) -> bool {
        let in_range = |chip: &ChipState| {
            let base = chip.vector_base & 0xf8;
            (base..base.wrapping_add(8)).contains(&vector) && base.checked_add(8).is_some()
        };
        let undo = |chip: &mut ChipState, line: u8| {
            let bit = 1u8 << line;
            // A spurious vector (line 7 never in service) took nothing: nothing to undo.
            if !chip.auto_eoi && chip.isr & bit == 0 {
                return;
            }
            chip.irr |= bit;
            if !chip.auto_eoi {
                chip.isr &= !bit;
            }
        };
        if in_range(&self.slave) {
            let line = vector - (self.slave.vector_base & 0xf8);
            undo(&mut self.slave, line);
            undo(&mut self.master, 2);
            true
        } else if in_range(&self.master) {
            let line = vector - (self.master.vector_base & 0xf8);
            undo(&mut self.master, line);
            true
        } else {
            false
        }
    }
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
    /// The state a PC BIOS leaves: both chips initialised and fully masked, vectors 0x08
    /// and 0x70, all lines edge triggered.
    pub fn new() -> Self {
        Self {
            master: ChipState::bios(BIOS_MASTER_VECTORS),
            slave: ChipState::bios(BIOS_SLAVE_VECTORS),
        }
    }

    /// Saves the state.
    pub fn state(&self) -> PicState {
        PicState {
            master: self.master.clone(),
            slave: self.slave.clone(),
        }
    }

    /// Restores a saved state after checking both chips.
    pub fn from_state(state: PicState) -> Result<Self, StateError> {
        state.master.validate("PIC master", MASTER_ELCR_MASK)?;
        state.slave.validate("PIC slave", SLAVE_ELCR_MASK)?;
        let mut pic = Self {
            master: state.master,
            slave: state.slave,
        };
        // A saved state already has the cascade line consistent (every operation updates
        // it), so this changes nothing for a state this code produced.
        pic.update_cascade();
        Ok(pic)
    }

    /// An edge on ISA line `irq` (0..16): the line goes high and low again, so an edge
    /// triggered input latches a request and a level-triggered one sees a pulse it may
    /// miss (as on hardware; level devices use [`Pic::set_irq_level`]). ISA IRQ2 is the
    /// cascade on a PC AT; devices wired to IRQ2 on the bus reach IRQ9, as on hardware.
    /// Lines outside 0..16 are ignored.
    pub fn raise_irq(&mut self, irq: u8) {
        self.set_irq_level(irq, true);
        self.set_irq_level(irq, false);
    }

    /// Drive ISA line `irq` to `level`. Lines outside 0..16 are ignored.
    pub fn set_irq_level(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_LINE => self.slave.set_level(1, level),
            0..=7 => self.master.set_level(irq, level),
            8..=15 => self.slave.set_level(irq - 8, level),
            _ => return,
        }
        self.update_cascade();
    }

    /// The slave's INT output drives master line 2.
    fn update_cascade(&mut self) {
        let out = self.slave.pending(false).is_some();
        self.master.set_level(CASCADE_LINE, out);
    }

    /// ISA lines (0-15) with an unmasked request latched (IRR), whatever is in service.
    /// The slave's lines count only while the master's cascade line is unmasked.
    pub fn requested_lines(&self) -> u16 {
        let master = self.master.irr & !self.master.imr;
        let slave = if self.master.imr & (1 << CASCADE_LINE) == 0 {
            self.slave.irr & !self.slave.imr
        } else {
            0
        };
        u16::from(master) | u16::from(slave) << 8
    }

    /// Whether an unmasked request would interrupt the CPU now (the master's INT output).
    pub fn has_pending_interrupt(&self) -> bool {
        self.master.pending(true).is_some()
    }

    /// The INTA cycle: acknowledge the highest-priority request and return its vector, or
    /// None when nothing is requesting (nothing must be injected then). If the master
    /// routes the cycle to the slave but the slave's request has vanished (masked since
    /// the master latched it), the slave answers with its spurious vector (line 15),
    /// and the master's line 2 is in service as on hardware.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if !self.has_pending_interrupt() {
            return None;
        }
        Some(self.inta())
    }

    /// The INTA cycle as the CPU runs it once it has committed to taking an interrupt:
    /// like [`Pic::acknowledge`], but a request that vanished on the master yields the
    /// master's spurious vector (line 7, nothing put in service).
    pub fn inta(&mut self) -> u8 {
        let vector = match self.master.pending(true) {
            Some(CASCADE_LINE) if !self.master.single => {
                let vector = match self.slave.pending(false) {
                    Some(line) => {
                        self.slave.ack(line);
                        self.slave.vector_base.wrapping_add(line)
                    }
                    None => self.slave.vector_base.wrapping_add(7),
                };
                self.master.ack(CASCADE_LINE);
                vector
            }
            Some(line) => {
                self.master.ack(line);
                self.master.vector_base.wrapping_add(line)
            }
            None => self.master.vector_base.wrapping_add(7),
        };
        self.update_cascade();
        vector
    }
}

impl BusDevice for Pic {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match (base, offset) {
            (MASTER_BASE, 0 | 1) => self.master.read(offset, true),
            (SLAVE_BASE, 0 | 1) => self.slave.read(offset, false),
            (ELCR_BASE, 0) => self.master.elcr,
            (ELCR_BASE, 1) => self.slave.elcr,
            _ => 0xff,
        };
        // A poll read acknowledges: keep the cascade line in step.
        self.update_cascade();
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let &[value] = data else { return };
        match (base, offset) {
            (MASTER_BASE, 0) => self.master.write_command(value),
            (MASTER_BASE, 1) => self.master.write_data(value),
            (SLAVE_BASE, 0) => self.slave.write_command(value),
            (SLAVE_BASE, 1) => self.slave.write_data(value),
            (ELCR_BASE, 0) => self.master.elcr = value & MASTER_ELCR_MASK,
            (ELCR_BASE, 1) => self.slave.elcr = value & SLAVE_ELCR_MASK,
            _ => return,
        }
        self.update_cascade();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(pic: &mut Pic, port: u64, v: u8) {
        let (base, offset) = if port >= ELCR_BASE {
            (ELCR_BASE, port - ELCR_BASE)
        } else {
            (port & !1, port & 1)
        };
        pic.write(base, offset, &[v]);
    }

    fn inb(pic: &mut Pic, port: u64) -> u8 {
        let mut b = [0];
        pic.read(port & !1, port & 1, &mut b);
        b[0]
    }

    /// The initialisation every OS does: vectors 0x20/0x28, cascade, 8086 mode, unmasked.
    fn init(pic: &mut Pic, auto_eoi: bool) {
        let icw4 = if auto_eoi { 3 } else { 1 };
        let sequence = [
            (0x20, 0x11),
            (0xa0, 0x11),
            (0x21, 0x20),
            (0xa1, 0x28),
            (0x21, 4),
            (0xa1, 2),
            (0x21, icw4),
            (0xa1, icw4),
        ];
        for (port, v) in sequence {
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
        assert_eq!(pic.acknowledge(), None);
        assert_eq!(inb(&mut pic, 0x21), 0xff);
        assert_eq!(inb(&mut pic, 0xa1), 0xff);
        // The request is latched: unmasking delivers it with the BIOS vector base.
        out(&mut pic, 0x21, 0xfe);
        assert_eq!(pic.acknowledge(), Some(0x08));
    }

    #[test]
    fn bios_slave_vectors() {
        let mut pic = Pic::new();
        out(&mut pic, 0x21, 0xfb);
        out(&mut pic, 0xa1, 0xfe);
        pic.raise_irq(8);
        assert_eq!(pic.acknowledge(), Some(0x70));
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
        // A lower priority one waits for both.
        pic.raise_irq(6);
        assert!(!pic.has_pending_interrupt());
        out(&mut pic, 0x20, 0x20); // ends IRQ1 (highest in service)
        assert!(!pic.has_pending_interrupt(), "IRQ4 still in service");
        out(&mut pic, 0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x26));
    }

    #[test]
    fn an_edge_is_latched_once() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(3);
        pic.raise_irq(3);
        assert_eq!(pic.acknowledge(), Some(0x23));
        out(&mut pic, 0x20, 0x20);
        assert_eq!(pic.acknowledge(), None);
        // A line held high produces no new edge.
        pic.set_irq_level(5, true);
        assert_eq!(pic.acknowledge(), Some(0x25));
        out(&mut pic, 0x20, 0x20);
        pic.set_irq_level(5, true);
        assert_eq!(pic.acknowledge(), None);
    }

    #[test]
    fn slave_lines_cascade_through_irq2() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(8 + 3);
        assert!(pic.has_pending_interrupt());
        assert_eq!(inb(&mut pic, 0x20) & 0x04, 0x04, "master IRR2 set");
        assert_eq!(pic.acknowledge(), Some(0x2b));
        out(&mut pic, 0x20, 0x0b);
        assert_eq!(inb(&mut pic, 0x20), 0x04, "master ISR2");
        out(&mut pic, 0xa0, 0x0b);
        assert_eq!(inb(&mut pic, 0xa0), 0x08, "slave ISR3");
        out(&mut pic, 0xa0, 0x20);
        out(&mut pic, 0x20, 0x20);
        assert!(!pic.has_pending_interrupt());
        assert_eq!(inb(&mut pic, 0x20), 0, "nothing in service");
    }

    #[test]
    fn isa_irq2_is_routed_to_irq9() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(2);
        assert_eq!(pic.acknowledge(), Some(0x29));
    }

    #[test]
    fn masked_lines_wait_and_irr_isr_are_readable() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        out(&mut pic, 0x21, 0x01);
        pic.raise_irq(0);
        assert!(!pic.has_pending_interrupt());
        assert_eq!(inb(&mut pic, 0x20), 0x01); // IRR by default
        assert_eq!(inb(&mut pic, 0x21), 0x01); // IMR
        out(&mut pic, 0x21, 0x00);
        assert_eq!(pic.acknowledge(), Some(0x20));
        out(&mut pic, 0x20, 0x0b); // OCW3: read ISR
        assert_eq!(inb(&mut pic, 0x20), 0x01);
        out(&mut pic, 0x20, 0x0a); // OCW3: read IRR
        assert_eq!(inb(&mut pic, 0x20), 0x00);
    }

    #[test]
    fn spurious_vectors_when_the_request_vanished() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        // Master: the CPU committed to an INTA but the request is gone.
        assert_eq!(pic.inta(), 0x27);
        out(&mut pic, 0x20, 0x0b);
        assert_eq!(
            inb(&mut pic, 0x20),
            0,
            "spurious IRQ7 is not put in service"
        );
        // Slave: the master latched the cascade edge, then the slave line was masked.
        out(&mut pic, 0x20, 0x0a);
        pic.raise_irq(12);
        out(&mut pic, 0xa1, 0x10);
        assert!(pic.has_pending_interrupt(), "master IRR2 is latched");
        assert_eq!(pic.acknowledge(), Some(0x2f));
        out(&mut pic, 0x20, 0x0b);
        assert_eq!(inb(&mut pic, 0x20), 0x04, "master line 2 in service");
        out(&mut pic, 0xa0, 0x0b);
        assert_eq!(inb(&mut pic, 0xa0), 0, "nothing in service on the slave");
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let mut pic = Pic::new();
        init(&mut pic, true);
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        out(&mut pic, 0x20, 0x0b);
        assert_eq!(inb(&mut pic, 0x20), 0);
    }

    #[test]
    fn rotation_changes_priorities() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        // Rotate on non-specific EOI: the line just served becomes the lowest.
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        out(&mut pic, 0x20, 0xa0);
        pic.raise_irq(0);
        pic.raise_irq(5);
        assert_eq!(pic.acknowledge(), Some(0x25));
        out(&mut pic, 0x20, 0xe5); // rotate on specific EOI for line 5
        assert_eq!(pic.acknowledge(), Some(0x20));
        out(&mut pic, 0x20, 0x60); // specific EOI line 0
                                   // Set priority: line 3 lowest, so line 4 is now the highest.
        out(&mut pic, 0x20, 0xc3);
        pic.raise_irq(3);
        pic.raise_irq(4);
        assert_eq!(pic.acknowledge(), Some(0x24));
        out(&mut pic, 0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x23));
        out(&mut pic, 0x20, 0x20);
    }

    #[test]
    fn rotate_in_auto_eoi_mode() {
        let mut pic = Pic::new();
        init(&mut pic, true);
        out(&mut pic, 0x20, 0x80); // set rotate in auto-EOI
        pic.raise_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        pic.raise_irq(1);
        pic.raise_irq(6);
        assert_eq!(pic.acknowledge(), Some(0x26), "line 1 became the lowest");
        out(&mut pic, 0x20, 0x00); // clear rotate in auto-EOI
        pic.raise_irq(7);
        assert_eq!(
            pic.acknowledge(),
            Some(0x27),
            "line 6 became the lowest, 7 next"
        );
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_in() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        pic.raise_irq(5);
        assert!(!pic.has_pending_interrupt());
        // Mask the line in service and enter special mask mode.
        out(&mut pic, 0x21, 0x02);
        out(&mut pic, 0x20, 0x68);
        assert_eq!(pic.acknowledge(), Some(0x25));
        out(&mut pic, 0x20, 0x48); // leave special mask mode
        out(&mut pic, 0x20, 0x65);
        pic.raise_irq(6);
        assert!(!pic.has_pending_interrupt(), "line 1 blocks again");
    }

    #[test]
    fn special_fully_nested_mode_nests_slave_requests() {
        let mut pic = Pic::new();
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 0x11)] {
            out(&mut pic, port, v);
        }
        out(&mut pic, 0x21, 0);
        out(&mut pic, 0xa1, 0);
        pic.raise_irq(12);
        assert_eq!(pic.acknowledge(), Some(0x74));
        pic.raise_irq(9);
        assert_eq!(pic.acknowledge(), Some(0x71), "higher slave line nests");
    }

    #[test]
    fn poll_command_acknowledges() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(5);
        out(&mut pic, 0x20, 0x0c);
        assert_eq!(inb(&mut pic, 0x20), 0x85);
        out(&mut pic, 0x20, 0x0c);
        assert_eq!(inb(&mut pic, 0x21), 0x00, "nothing requesting");
        // Only one read is the poll word.
        assert_eq!(inb(&mut pic, 0x21), 0x00, "IMR again");
        out(&mut pic, 0x20, 0x0b);
        assert_eq!(inb(&mut pic, 0x20), 0x20, "line 5 in service");
    }

    #[test]
    fn icw1_resets_masks_and_edges_but_keeps_level_lines() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        out(&mut pic, 0x4d1, 0x02); // IRQ9 level triggered
        pic.set_irq_level(9, true);
        pic.raise_irq(10);
        out(&mut pic, 0xa0, 0x11);
        out(&mut pic, 0xa1, 0x30);
        out(&mut pic, 0xa1, 2);
        out(&mut pic, 0xa1, 1);
        assert_eq!(inb(&mut pic, 0xa1), 0, "IMR cleared by ICW1");
        assert_eq!(
            inb(&mut pic, 0xa0),
            0x02,
            "edge request dropped, level kept"
        );
        assert_eq!(pic.acknowledge(), Some(0x31));
    }

    #[test]
    fn level_triggered_lines_follow_the_level() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        out(&mut pic, 0x4d0, 0x20);
        pic.set_irq_level(5, true);
        assert_eq!(pic.acknowledge(), Some(0x25));
        out(&mut pic, 0x20, 0x20);
        assert!(pic.has_pending_interrupt(), "still asserted");
        pic.set_irq_level(5, false);
        assert!(!pic.has_pending_interrupt());
    }

    #[test]
    fn elcr_keeps_edge_only_lines_edge() {
        let mut pic = Pic::new();
        out(&mut pic, 0x4d0, 0xff);
        out(&mut pic, 0x4d1, 0xff);
        let mut b = [0];
        pic.read(ELCR_BASE, 0, &mut b);
        assert_eq!(b[0], 0xf8);
        pic.read(ELCR_BASE, 1, &mut b);
        assert_eq!(b[0], 0xde);
    }

    #[test]
    fn other_widths_and_offsets_read_all_ones() {
        let mut pic = Pic::new();
        let mut w = [0u8; 2];
        pic.read(MASTER_BASE, 0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        pic.write(MASTER_BASE, 1, &[0, 0]);
        assert_eq!(inb(&mut pic, 0x21), 0xff, "2-byte write ignored");
        let mut b = [0];
        pic.read(MASTER_BASE, 2, &mut b);
        assert_eq!(b[0], 0xff);
        pic.read(0x1234, 0, &mut b);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        out(&mut pic, 0x20, 0xc4);
        pic.raise_irq(3);
        pic.raise_irq(11);
        let state = pic.state();
        let json = serde_json::to_string(&state).unwrap();
        let mut restored = Pic::from_state(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(restored.state(), state);
        for _ in 0..3 {
            assert_eq!(restored.acknowledge(), pic.acknowledge());
            out(&mut pic, 0x20, 0x20);
            out(&mut restored, 0x20, 0x20);
        }

        type Corrupt = fn(&mut PicState);
        let bad_cases: [(Corrupt, &str); 4] = [
            (|s| s.slave.priority_add = 9, "priority_add"),
            (|s| s.master.init_step = 1, "init_step"),
            (|s| s.master.vector_base = 0x21, "vector_base"),
            (|s| s.master.elcr = 0x01, "elcr"),
        ];
        for (corrupt, field) in bad_cases {
            let mut bad = pic.state();
            corrupt(&mut bad);
            let err = Pic::from_state(bad).unwrap_err();
            assert!(err.reason.contains(field), "{err}");
        }
    }

    #[test]
    fn giving_back_an_acknowledged_vector_delivers_it_again() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(4);
        assert_eq!(pic.acknowledge(), Some(0x24));
        let mut state = pic.state();
        assert!(state.give_back(0x24));
        let mut restored = Pic::from_state(state).unwrap();
        assert_eq!(restored.acknowledge(), Some(0x24));
        // A slave vector also releases the cascade line.
        pic.raise_irq(10);
        out(&mut pic, 0x20, 0x64); // EOI for IRQ4 first
        assert_eq!(pic.acknowledge(), Some(0x2a));
        let mut state = pic.state();
        assert!(state.give_back(0x2a));
        assert_eq!(state.master.isr & 0x04, 0);
        let mut restored = Pic::from_state(state).unwrap();
        assert_eq!(restored.acknowledge(), Some(0x2a));
        assert!(!pic.state().give_back(0x80));
    }

    #[test]
    fn requested_lines_show_latched_unmasked_requests() {
        let mut pic = Pic::new();
        init(&mut pic, false);
        pic.raise_irq(0);
        pic.raise_irq(4);
        assert_eq!(pic.requested_lines(), 0b1_0001);
        assert_eq!(pic.acknowledge(), Some(0x20));
        // IRQ4 stays requested while IRQ0 is in service, though it cannot interrupt yet.
        assert_eq!(pic.requested_lines(), 0b1_0000);
        assert!(!pic.has_pending_interrupt());
        pic.raise_irq(10);
        assert_eq!(pic.requested_lines(), 0b100_0001_0100); // and the cascade line
        out(&mut pic, 0x21, 0x10); // mask IRQ4
        assert_eq!(pic.requested_lines(), 0b100_0000_0100);
    }

    #[test]
    fn survives_random_access() {
        let mut pic = Pic::new();
        crate::testing::hammer(&mut pic, &[MASTER_BASE, SLAVE_BASE, ELCR_BASE], 2, None);
        for irq in 0..=255u8 {
            pic.raise_irq(irq);
            pic.set_irq_level(irq, irq % 3 == 0);
            let _ = pic.acknowledge();
            let _ = pic.inta();
        }
        assert!(Pic::from_state(pic.state()).is_ok());
    }
}
