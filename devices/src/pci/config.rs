//! A type 0 configuration space: 256 bytes with a per-byte write mask.
//!
//! Read-only fields are simply bytes whose mask is zero. BARs need no special case: the
//! mask of a memory BAR covers only its address bits (those above the size), so writing
//! all ones reads back the size mask with the type bits, which is the sizing protocol.

use serde::{Deserialize, Serialize};

use super::*;

/// Memory BAR flavours (no I/O BARs: nothing here needs port space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR, placed below 4 GiB.
    Memory32,
    /// Takes two BAR registers: the upper half holds address bits 32..64.
    Memory64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    size: u64,
    kind: BarKind,
}

/// The identity a function shows in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code, subclass and programming interface, as 0xCCSSPP.
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// What is saved of a configuration space: its bytes. Masks and BAR sizes belong to the
/// device model and are rebuilt by its constructor, against which a saved state is checked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigSpaceState {
    /// The 256 bytes of configuration space.
    pub bytes: Vec<u8>,
}

/// The configuration space of one function: its register bytes, which bits of them the
/// guest may write, and the BARs the device model declared.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    regs: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<Bar>; NUM_BARS],
    /// End of the capability list built so far.
    caps_end: usize,
    /// Offset of the last capability, whose next pointer the following one fills in.
    last_cap: Option<usize>,
}

impl ConfigSpace {
    /// A type 0 header showing `ids`, with no BAR, capability or interrupt pin yet; only the
    /// memory, bus-master and INTx-disable command bits are guest-writable.
    pub fn new(ids: PciIds) -> Self {
        let mut c = Self {
            regs: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            caps_end: HEADER_END,
            last_cap: None,
        };
        c.put(VENDOR_ID, &ids.vendor.to_le_bytes());
        c.put(DEVICE_ID, &ids.device.to_le_bytes());
        c.regs[REVISION_ID] = ids.revision;
        c.put(CLASS_PROG, &ids.class.to_le_bytes()[..3]);
        c.put(SUBSYSTEM_VENDOR_ID, &ids.subsystem_vendor.to_le_bytes());
        c.put(SUBSYSTEM_ID, &ids.subsystem.to_le_bytes());
        // Memory space, bus master and INTx disable are the command bits a virtio function
        // honours; I/O space stays hardwired to zero (no I/O BARs).
        let command_mask = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&command_mask.to_le_bytes());
        c
    }

    fn put(&mut self, offset: usize, bytes: &[u8]) {
        self.regs[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn get_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.regs[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    /// Declares INTx pin `pin` (1 = INTA); the Interrupt Line becomes writable.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.regs[INTERRUPT_PIN] = pin;
        self.writable[INTERRUPT_LINE] = 0xff;
    }

    /// Firmware's routing of the pin: the PIC line the VMM wires the function to.
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.regs[INTERRUPT_LINE] = line;
    }

    /// The Interrupt Line register: the PIC line firmware routed the pin to.
    pub fn interrupt_line(&self) -> u8 {
        self.regs[INTERRUPT_LINE]
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get_u16(COMMAND)
    }

    /// Sets the command register, bypassing the write mask (as firmware does).
    pub fn set_command(&mut self, command: u16) {
        self.put(COMMAND, &command.to_le_bytes());
    }

    /// Whether memory space decoding (command bit 1) is on.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Whether INTx is disabled (command bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// The read-only Interrupt Status bit of the status register, which mirrors the
    /// function's INTx condition (set even while INTx is disabled, as the spec says).
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let status = self.get_u16(STATUS) & !STATUS_INTERRUPT;
        let bit = if pending { STATUS_INTERRUPT } else { 0 };
        self.put(STATUS, &(status | bit).to_le_bytes());
    }

    /// Declares memory BAR `index` of `size` bytes (a power of two, at least 16).
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind) -> Result<(), PciError> {
        let regs = if kind == BarKind::Memory64 { 2 } else { 1 };
        if index + regs > NUM_BARS {
            return Err(PciError::BadBarIndex(index));
        }
        let too_big = kind == BarKind::Memory32 && size > 1 << 31;
        if !size.is_power_of_two() || size < 16 || too_big {
            return Err(PciError::BadBarSize { index, size });
        }
        if (index..index + regs).any(|i| self.bar_register_used(i)) {
            return Err(PciError::BarInUse(index));
        }
        self.bars[index] = Some(Bar { size, kind });
        let offset = BAR0 + 4 * index;
        // Type bits 2:1 = 10b for a 64-bit BAR; not prefetchable.
        self.regs[offset] = if kind == BarKind::Memory64 { 0x4 } else { 0 };
        let mask = !(size - 1);
        self.writable[offset..offset + 4].copy_from_slice(&(mask as u32).to_le_bytes());
        if kind == BarKind::Memory64 {
            let high = (mask >> 32) as u32;
            self.writable[offset + 4..offset + 8].copy_from_slice(&high.to_le_bytes());
        }
        Ok(())
    }

    /// Whether BAR register `i` belongs to a declared BAR (itself or a 64-bit lower half).
    fn bar_register_used(&self, i: usize) -> bool {
        self.bars[i].is_some()
            || (i > 0 && matches!(self.bars[i - 1], Some(b) if b.kind == BarKind::Memory64))
    }

    /// The size in bytes of BAR `index`, if the device declared it.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|b| b.size)
    }

    /// The address BAR `index` holds now (whatever the guest last wrote).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let offset = BAR0 + 4 * index;
        let low = u64::from(self.get_u32(offset) & !0xf);
        let high = match bar.kind {
            BarKind::Memory32 => 0,
            BarKind::Memory64 => u64::from(self.get_u32(offset + 4)),
        };
        Some(high << 32 | low)
    }

    /// Places BAR `index` at `addr`, as firmware does before the OS starts.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        let bar = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(PciError::NoSuchBar(index))?;
        let fits = bar.kind == BarKind::Memory64 || addr.checked_add(bar.size) <= Some(1 << 32);
        if !addr.is_multiple_of(bar.size) || !fits {
            return Err(PciError::BadBarAddress {
                index,
                addr,
                size: bar.size,
            });
        }
        let offset = BAR0 + 4 * index;
        let flags = self.regs[offset] & 0xf;
        self.put(offset, &(addr as u32 | u32::from(flags)).to_le_bytes());
        if bar.kind == BarKind::Memory64 {
            self.put(offset + 4, &((addr >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    /// The BAR and offset within it that decode `addr`, if memory decoding is on. A BAR
    /// at address 0 is unassigned and decodes nothing.
    pub fn decode(&self, addr: u64) -> Option<(usize, u64)> {
        if !self.memory_enabled() {
            return None;
        }
        (0..NUM_BARS).find_map(|i| {
            let size = self.bar_size(i)?;
            let base = self.bar_address(i).filter(|&b| b != 0)?;
            let offset = addr.checked_sub(base)?;
            (offset < size).then_some((i, offset))
        })
    }

    /// Appends a capability. `body` starts with the capability id and a placeholder next
    /// byte and is a multiple of 4 bytes long; it is read-only. Returns its offset.
    pub fn add_capability(&mut self, body: &[u8]) -> Result<usize, PciError> {
        if body.len() < 4 || !body.len().is_multiple_of(4) {
            return Err(PciError::BadCapability(body.len()));
        }
        let offset = self.caps_end;
        if offset + body.len() > CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilityTooLarge {
                len: body.len(),
                used: offset,
            });
        }
        self.put(offset, body);
        self.regs[offset + 1] = 0;
        match self.last_cap {
            Some(last) => self.regs[last + 1] = offset as u8,
            None => {
                self.regs[CAPABILITIES_POINTER] = offset as u8;
                let status = self.get_u16(STATUS) | STATUS_CAPABILITIES;
                self.put(STATUS, &status.to_le_bytes());
            }
        }
        self.last_cap = Some(offset);
        self.caps_end = offset + body.len();
        Ok(offset)
    }

    /// Makes `len` bytes at `offset` guest-writable (registers inside a capability).
    pub fn set_writable(&mut self, offset: usize, len: usize) {
        self.writable
            .iter_mut()
            .skip(offset)
            .take(len)
            .for_each(|w| *w = 0xff);
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as all ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes through the mask; bytes past the end are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let mask = self.writable[o];
            self.regs[o] = (self.regs[o] & !mask) | (v & mask);
        }
    }

    /// Saves the register bytes.
    pub fn state(&self) -> ConfigSpaceState {
        ConfigSpaceState {
            bytes: self.regs.to_vec(),
        }
    }

    /// Loads saved bytes into a freshly built configuration space of the same device: every
    /// read-only byte must match what the device model has (except the dynamic Interrupt
    /// Status bit, which the device recomputes), so a state cannot change a device's
    /// identity, BAR sizes or capabilities.
    pub fn restore(&mut self, state: &ConfigSpaceState) -> Result<(), PciError> {
        let saved: &[u8; CONFIG_SPACE_SIZE] = state
            .bytes
            .as_slice()
            .try_into()
            .map_err(|_| PciError::BadStateLength(state.bytes.len()))?;
        for (offset, (&saved, &expected)) in saved.iter().zip(&self.regs).enumerate() {
            let mut fixed = !self.writable[offset];
            if offset == STATUS {
                fixed &= !(STATUS_INTERRUPT as u8);
            }
            if (saved ^ expected) & fixed != 0 {
                return Err(PciError::ReadOnlyChanged {
                    offset,
                    saved,
                    expected,
                });
            }
        }
        self.regs = *saved;
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
