//! Bus 0: configuration mechanism #1, the host bridge, and MMIO routing to BARs.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::*;
use crate::{BusDevice, StateError};

/// Bits of the address register that exist: enable (31), extended register (27:24, the
/// AMD extension Linux's PCI_CONF1_ADDRESS fills for offsets past 255), bus (23:16),
/// device (15:11), function (10:8), dword register (7:2). The rest read as zero.
const ADDRESS_MASK: u32 = 0x8fff_fffc;
const ADDRESS_EXTENDED: u32 = 0x0f00_0000;
const ADDRESS_ENABLE: u32 = 1 << 31;

/// The host bridge's identity: an Intel 440FX, which every OS knows. Linux's type 1
/// probe (`pci_sanity_check`, when the firmware is older than 2001 or absent as here)
/// accepts mechanism #1 once some function on bus 0 reads class 0x0600 at offset 0x0a.
const HOST_BRIDGE_IDS: PciIds = PciIds {
    vendor: 0x8086,
    device: 0x1237,
    revision: 0x02,
    class: 0x06_00_00,
    subsystem_vendor: 0,
    subsystem: 0,
};

/// Saved registers of the bus itself; each function saves its own state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PciBusState {
    /// The configuration address register.
    pub address: u32,
    /// The host bridge's configuration space.
    pub bridge: ConfigSpaceState,
}

/// Bus 0: the host bridge and up to 31 functions, registered at
/// [`CONFIG_ADDRESS_PORT`] on the port bus.
pub struct PciBus {
    address: u32,
    bridge: ConfigSpace,
    /// Device number `n` (1..32) is `functions[n - 1]`.
    functions: Vec<Arc<Mutex<dyn PciFunction>>>,
    window_start: u64,
    window_end: u64,
    /// Where firmware-style BAR placement continues.
    next_free: u64,
}

impl PciBus {
    /// A bus with its host bridge; BARs are placed in `window_start..+window_len`, which
    /// must lie below 4 GiB (32-bit BARs) and be free of RAM and other devices.
    pub fn new(window_start: u64, window_len: u64) -> Result<Self, PciError> {
        let window_end = window_start
            .checked_add(window_len)
            .filter(|&end| window_len > 0 && end <= 1 << 32)
            .ok_or(PciError::BadWindow {
                start: window_start,
                len: window_len,
            })?;
        Ok(Self {
            address: 0,
            bridge: ConfigSpace::new(HOST_BRIDGE_IDS),
            functions: Vec::new(),
            window_start,
            window_end,
            next_free: window_start,
        })
    }

    /// The MMIO window given to [`PciBus::new`], as (start, length), for the VMM to
    /// register a [`PciMmio`] over.
    pub fn window(&self) -> (u64, u64) {
        (self.window_start, self.window_end - self.window_start)
    }

    /// Plugs a freshly powered-on `function` into the next free device number and does
    /// what firmware would: places each BAR, naturally aligned, in the window; routes its
    /// INTx pin to ISA line `irq` (Interrupt Line); enables memory decoding. Returns the
    /// device number.
    pub fn add_function(
        &mut self,
        function: Arc<Mutex<dyn PciFunction>>,
        irq: u8,
    ) -> Result<u8, PciError> {
        if irq >= 16 {
            return Err(PciError::BadIrq(irq));
        }
        self.check_room()?;
        let mut next = self.next_free;
        {
            let mut f = lock(&function);
            let config = f.config_mut();
            for index in 0..NUM_BARS {
                let Some(size) = config.bar_size(index) else {
                    continue;
                };
                let addr = next
                    .checked_next_multiple_of(size)
                    .filter(|a| a.checked_add(size) <= Some(self.window_end))
                    .ok_or(PciError::WindowFull { size })?;
                config.set_bar_address(index, addr)?;
                next = addr + size;
            }
            config.set_interrupt_line(irq);
            config.set_command(config.command() | COMMAND_MEMORY);
        }
        self.next_free = next;
        self.functions.push(function);
        Ok(self.functions.len() as u8)
    }

    /// Plugs a restored `function` in as it is: its BARs, Interrupt Line and command
    /// register come from its saved configuration space, which the guest may have
    /// changed since firmware set it up. Functions go back in the order they were added,
    /// so each gets its device number again.
    pub fn attach_function(
        &mut self,
        function: Arc<Mutex<dyn PciFunction>>,
    ) -> Result<u8, PciError> {
        self.check_room()?;
        {
            let f = lock(&function);
            // Later firmware placement (a device added after a restore) goes past it.
            for index in 0..NUM_BARS {
                let config = f.config();
                if let (Some(addr), Some(size)) =
                    (config.bar_address(index), config.bar_size(index))
                {
                    let end = addr.saturating_add(size);
                    if addr >= self.window_start && end <= self.window_end {
                        self.next_free = self.next_free.max(end);
                    }
                }
            }
        }
        self.functions.push(function);
        Ok(self.functions.len() as u8)
    }

    fn check_room(&self) -> Result<(), PciError> {
        if self.functions.len() + 1 >= MAX_DEVICES {
            return Err(PciError::BusFull);
        }
        Ok(())
    }

    /// Saves the bus's own registers (not those of its functions).
    pub fn state(&self) -> PciBusState {
        PciBusState {
            address: self.address,
            bridge: self.bridge.state(),
        }
    }

    /// A bus with the saved registers of its own (address register, host bridge), over the
    /// same window as [`PciBus::new`]. Its functions keep their own states: the VMM
    /// restores each and puts it back with [`PciBus::attach_function`].
    pub fn from_state(
        state: &PciBusState,
        window_start: u64,
        window_len: u64,
    ) -> Result<Self, StateError> {
        let err = |e: PciError| StateError::new("PCI bus", e.to_string());
        if state.address & !ADDRESS_MASK != 0 {
            return Err(err(PciError::BadConfigAddress(state.address)));
        }
        let mut bus = Self::new(window_start, window_len).map_err(err)?;
        bus.bridge.restore(&state.bridge).map_err(err)?;
        bus.address = state.address;
        Ok(bus)
    }

    /// The function the address register selects and the register offset, or `None` when
    /// decoding is disabled or nothing is there (other buses, functions 1..8, empty slots).
    fn selected(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        let device = ((a >> 11) & 0x1f) as usize;
        let function = (a >> 8) & 0x7;
        // Offsets past 255 (extended configuration space) do not exist on these
        // conventional PCI functions: they read as all ones.
        let extended = a & ADDRESS_EXTENDED != 0;
        if a & ADDRESS_ENABLE == 0 || bus != 0 || function != 0 || extended {
            return None;
        }
        (device <= self.functions.len()).then_some((device, (a & 0xfc) as usize))
    }

    fn data_read(&mut self, port_offset: usize, data: &mut [u8]) {
        let Some((device, reg)) = self.selected() else {
            data.fill(0xff);
            return;
        };
        let offset = reg + port_offset;
        match device {
            0 => self.bridge.read(offset, data),
            n => lock(&self.functions[n - 1]).config_read(offset, data),
        }
    }

    fn data_write(&mut self, port_offset: usize, data: &[u8]) {
        let Some((device, reg)) = self.selected() else {
            return;
        };
        let offset = reg + port_offset;
        match device {
            0 => self.bridge.write(offset, data),
            n => lock(&self.functions[n - 1]).config_write(offset, data),
        }
    }

    /// An MMIO access at guest-physical `addr`: the first function whose enabled BAR holds
    /// it gets it. Returns whether one did; unclaimed reads are all ones.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        for function in &self.functions {
            let mut f = lock(function);
            if let Some((bar, offset)) = f.config().decode(addr) {
                f.bar_read(bar, offset, data);
                return true;
            }
        }
        data.fill(0xff);
        false
    }

    /// An MMIO write at guest-physical `addr`, routed as [`PciBus::mmio_read`] routes
    /// reads. Returns whether a function took it; unclaimed writes are ignored.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        for function in &self.functions {
            let mut f = lock(function);
            if let Some((bar, offset)) = f.config().decode(addr) {
                f.bar_write(bar, offset, data);
                return true;
            }
        }
        false
    }
}

/// Ports 0xcf8..0xd00: the address register takes dword accesses only (byte accesses to
/// 0xcf8..0xcfb are other chipset registers on a PC, absent here); the data window takes
/// any width at any offset, each byte landing at register + (port - 0xcfc).
impl BusDevice for PciBus {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (4..=7, 1 | 2 | 4) if offset as usize + data.len() <= 8 => {
                self.data_read(offset as usize - 4, data)
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let mut b = [0; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & ADDRESS_MASK;
            }
            (4..=7, 1 | 2 | 4) if offset as usize + data.len() <= 8 => {
                self.data_write(offset as usize - 4, data)
            }
            _ => {}
        }
    }
}

/// The bus's view of the MMIO window, registered on the VMM's MMIO bus.
pub struct PciMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciMmio {
    /// The MMIO view of `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus }
    }
}

impl BusDevice for PciMmio {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        match base.checked_add(offset) {
            Some(addr) => {
                lock(&self.bus).mmio_read(addr, data);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if let Some(addr) = base.checked_add(offset) {
            lock(&self.bus).mmio_write(addr, data);
        }
    }
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
