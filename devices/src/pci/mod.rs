//! PCI on bus 0 of the deterministic machine: configuration mechanism #1, a host bridge,
//! and functions (virtio devices) whose memory BARs the VMM places as firmware would.
//!
//! The stock kernel boots with `acpi=off` and no MP table, so PCI is the only way to
//! announce devices to it: it probes bus 0 through ports 0xcf8/0xcfc, reads each
//! function's BARs as the firmware left them, and takes its INTx interrupt from the
//! Interrupt Line register (there is no I/O APIC), which the i8259 then carries.
//!
//! The VMM registers a [`PciBus`] on the port bus at [`CONFIG_ADDRESS_PORT`] (length
//! [`CONFIG_PORTS_LEN`]) and a [`PciMmio`] on the MMIO bus over the window given to
//! [`PciBus::new`]; MMIO accesses are routed to whichever function's BAR decodes them at
//! that moment (the guest may move or disable BARs).

mod bus;
mod config;

use std::sync::{Mutex, MutexGuard};

pub use bus::{PciBus, PciBusState, PciMmio};
pub use config::{BarKind, ConfigSpace, ConfigSpaceState, PciIds};

/// Configuration mechanism #1: the address register (dword accesses only) ...
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// ... and the data window (byte, word or dword accesses at 0xcfc..0xd00).
pub const CONFIG_DATA_PORT: u64 = 0xcfc;
/// The port range a [`PciBus`] is registered at.
pub const CONFIG_PORTS_LEN: u64 = 8;

/// A 32-bit MMIO window for BARs inside the machine's hole below 4 GiB (0xc000_0000..),
/// clear of the system controller at 0xd000_0000. A suggestion for the VMM; any window
/// below 4 GiB that is not RAM works.
pub const DEFAULT_MMIO_WINDOW_START: u64 = 0xe000_0000;
/// Length of the default BAR window in bytes (256 MiB, up to 0xf000_0000).
pub const DEFAULT_MMIO_WINDOW_LEN: u64 = 0x1000_0000;

/// Bus 0 has 32 device numbers; 0 is the host bridge.
pub const MAX_DEVICES: usize = 32;

/// Standard configuration-space offsets (PCI Local Bus 3.0, 6.1).
pub const VENDOR_ID: usize = 0x00;
/// Device ID (16 bits).
pub const DEVICE_ID: usize = 0x02;
/// Command register (16 bits).
pub const COMMAND: usize = 0x04;
/// Status register (16 bits).
pub const STATUS: usize = 0x06;
/// Revision ID (8 bits).
pub const REVISION_ID: usize = 0x08;
/// Class code: programming interface, subclass and base class (3 bytes).
pub const CLASS_PROG: usize = 0x09;
/// Header type (8 bits).
pub const HEADER_TYPE: usize = 0x0e;
/// Base address register 0 (32 bits); BAR `n` is at `BAR0 + 4 * n`.
pub const BAR0: usize = 0x10;
/// Subsystem vendor ID (16 bits).
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID (16 bits).
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Offset of the first capability (8 bits).
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt Line: the interrupt controller input firmware routed the pin to (8 bits).
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt Pin: 0 for none, 1..=4 for INTA#..INTD# (8 bits).
pub const INTERRUPT_PIN: usize = 0x3d;
/// The first byte after the type 0 header: capabilities go from here.
pub const HEADER_END: usize = 0x40;
/// Size of a conventional configuration space, in bytes.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Base address registers in a type 0 header.
pub const NUM_BARS: usize = 6;

/// Command register: memory space decoding enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable (the function may access guest memory).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: the function's INTx condition is pending (read-only).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status register: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Interrupt Pin value of INTA#.
pub const PIN_INTA: u8 = 1;

/// Why a PCI setup step failed, or why a saved bus or configuration space was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR index out of range (the index).
    #[error("BAR index {0} is not 0..6 (or 0..5 for a 64-bit BAR)")]
    BadBarIndex(usize),
    /// A BAR size that is not a power of two of at least 16 bytes, or over 2 GiB for a
    /// 32-bit BAR.
    #[error("BAR {index} size {size:#x} is not a power of two of at least 16 bytes")]
    BadBarSize {
        /// The BAR index.
        index: usize,
        /// The size asked for, in bytes.
        size: u64,
    },
    /// A BAR register already taken (the index).
    #[error("BAR {0} is already defined (or is the upper half of a 64-bit BAR)")]
    BarInUse(usize),
    /// A BAR that was never declared (the index).
    #[error("BAR {0} is not defined")]
    NoSuchBar(usize),
    /// A BAR address that is not aligned to the BAR's size, or that puts a 32-bit BAR
    /// above 4 GiB.
    #[error("address {addr:#x} for BAR {index} is not aligned to its size {size:#x} or does not fit the BAR")]
    BadBarAddress {
        /// The BAR index.
        index: usize,
        /// The guest-physical address asked for.
        addr: u64,
        /// The BAR's size, in bytes.
        size: u64,
    },
    /// A capability that does not fit in configuration space.
    #[error("capability of {len} bytes does not fit in configuration space after {used:#x}")]
    CapabilityTooLarge {
        /// Length of the capability, in bytes.
        len: usize,
        /// Offset where it would start (the end of the capabilities so far).
        used: usize,
    },
    /// A capability body too short or not a multiple of 4 bytes (its length).
    #[error("capability body must start with the id and a next byte and be a multiple of 4 bytes, got {0} bytes")]
    BadCapability(usize),
    /// An MMIO window that is empty or does not lie below 4 GiB.
    #[error("MMIO window {start:#x}+{len:#x} is empty or not below 4 GiB")]
    BadWindow {
        /// Guest-physical start of the window.
        start: u64,
        /// Length of the window, in bytes.
        len: u64,
    },
    /// No room left in the MMIO window for a BAR.
    #[error("the MMIO window has no room for a BAR of {size:#x} bytes")]
    WindowFull {
        /// Size of the BAR that did not fit, in bytes.
        size: u64,
    },
    /// All 31 device numbers after the host bridge are taken.
    #[error("bus 0 already has {MAX_DEVICES} devices")]
    BusFull,
    /// An interrupt line that is not an ISA line 0..16 (the line).
    #[error("IRQ {0} is not an ISA line 0..16")]
    BadIrq(u8),
    /// A saved configuration space that is not 256 bytes long (its length).
    #[error("saved configuration space is {0} bytes, not 256")]
    BadStateLength(usize),
    /// A saved configuration space that differs from the device model in a read-only bit.
    #[error("saved configuration space changes read-only byte {offset:#x} ({saved:#x}, device has {expected:#x})")]
    ReadOnlyChanged {
        /// Offset of the byte in configuration space.
        offset: usize,
        /// The byte in the saved state.
        saved: u8,
        /// The byte the device model has.
        expected: u8,
    },
    /// A saved configuration address register with reserved bits set (its value).
    #[error("saved config address {0:#x} has reserved bits set")]
    BadConfigAddress(u32),
}

/// One function on bus 0 (function number 0 of its device: no multi-function devices).
///
/// The bus calls these with its own lock held; a function never calls back into the bus.
pub trait PciFunction: Send {
    /// The function's configuration space.
    fn config(&self) -> &ConfigSpace;
    /// The function's configuration space, for changes.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// A guest read of configuration space at `offset` (`data` is 1, 2 or 4 bytes).
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// A guest write; functions override it to react to the command register.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// An access at `offset` within memory BAR `bar`, already decoded by the bus.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` within memory BAR `bar`, already decoded by the bus.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// Locks a mutex even if a panic elsewhere poisoned it: a device access must never panic,
/// and the state behind the lock is plain registers that stay consistent.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
