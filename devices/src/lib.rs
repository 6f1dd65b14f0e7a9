//! Device models of the deterministic ftvm machine.
//!
//! Every device is a pure state machine in the style of vm-superio: it owns its registers,
//! takes what it needs from outside (a [`Clock`], an [`IrqLine`], an output writer) by
//! injection, and never does I/O or reads host time on its own. That is what lets the VMM
//! record every input a device sees and replay it on another host.
//!
//! Each device has a serde `*State` struct, `state()` to save it and `from_state()` /
//! `restore()` to load it. State may come from a file or the network, so restoring
//! validates it and reports what is wrong instead of panicking.

// The public API is documented; CI (clippy with -D warnings) keeps it so.
#![warn(missing_docs)]

pub mod absent;
pub mod cmos;
pub mod i8042;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod serial;
pub mod sysctl;
#[cfg(test)]
pub(crate) mod testing;
pub mod virtio;

pub use absent::{AbsentPorts, AbsentPortsState, ABSENT_PORT_RANGES, PCI_CONFIG_PORTS};
pub use cmos::{Cmos, CmosState};
pub use i8042::{I8042State, I8042};
pub use pci::{PciBus, PciBusState, PciMmio};
pub use pic::{Pic, PicState};
pub use pit::{Pit, PitState};
pub use serial::{Serial, SerialState};
pub use sysctl::{SysCtl, SysCtlState};
pub use virtio::{Block, Net, VirtioPci, VirtioPciState};

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// A device on the port-I/O or MMIO bus.
///
/// `base` is the start of the range the device was registered at (so one device can sit at
/// several ranges, e.g. the PIT at 0x40 and port 0x61) and `offset` is relative to it.
/// Accesses of a width the device does not implement read as all ones and are ignored on
/// write; a device never panics on what a guest does.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the range registered at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Virtual time as the guest sees it, in nanoseconds since the machine was created.
///
/// The VMM decides what time is (host monotonic time, a function of the exit ordinal for
/// deterministic tests, or values replayed from a log); devices only ask.
pub trait Clock: Send + Sync {
    /// The current virtual time, in nanoseconds since the machine was created.
    fn now_ns(&self) -> u64;
}

/// Edge-triggered interrupt requests raised by devices, waiting to be moved into the PIC.
///
/// Devices raise lines at any time; the vCPU loop drains them into the PIC only at a
/// synchronous exit, which keeps the moment an interrupt becomes visible deterministic.
///
/// The same object also carries level-triggered lines (PCI INTx, see [`LevelIrqLine`]):
/// a level is state, not an event, so the vCPU loop reads [`IrqLines::levels`] at a
/// synchronous exit and drives the PIC inputs to it.
#[derive(Debug, Default)]
pub struct IrqLines {
    raised: AtomicU16,
    /// Per ISA line, one bit per level source currently asserting it (wired-OR: PCI
    /// functions may share a line, and it stays asserted while any of them holds it).
    asserted: [AtomicU64; 16],
    /// Level sources handed out so far (at most 64, one bit each).
    sources: AtomicU8,
}

impl IrqLines {
    /// A set of lines with nothing raised or asserted, shared by the devices and the vCPU
    /// loop.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Raise an edge on ISA line `irq` (0..16). Out-of-range lines are ignored.
    pub fn raise(&self, irq: u8) {
        if irq < 16 {
            self.raised.fetch_or(1 << irq, Ordering::SeqCst);
        }
    }

    /// Take every line raised since the last call, as a bit mask.
    pub fn take(&self) -> u16 {
        self.raised.swap(0, Ordering::SeqCst)
    }

    /// A new level source on ISA line `irq` (0..16), initially deasserted. `None` when the
    /// line is out of range or all 64 sources are taken.
    pub fn level_line(self: &Arc<Self>, irq: u8) -> Option<LevelIrqLine> {
        if irq >= 16 {
            return None;
        }
        let source = self
            .sources
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < 64).then_some(n + 1)
            })
            .ok()?;
        Some(LevelIrqLine {
            lines: self.clone(),
            irq,
            bit: 1 << source,
        })
    }

    /// The lines that at least one level source asserts, as a bit mask.
    pub fn levels(&self) -> u16 {
        let mut mask = 0;
        for (irq, sources) in self.asserted.iter().enumerate() {
            if sources.load(Ordering::SeqCst) != 0 {
                mask |= 1 << irq;
            }
        }
        mask
    }
}

/// One level-triggered source on an ISA line (a PCI function's INTx pin).
///
/// The device sets its level whenever its interrupt condition changes; the VMM applies
/// [`IrqLines::levels`] to the PIC (`Pic::set_irq_level`) at synchronous exits. Firmware
/// (the VMM) marks such lines level-triggered in the ELCR, as a PC BIOS does for PCI
/// interrupts, so the PIC keeps requesting while the line is high.
///
/// A clone is the same source (the same bit): the VMM keeps one to hand to a function it
/// rebuilds from a saved state, so that loading states never uses up sources.
#[derive(Debug, Clone)]
pub struct LevelIrqLine {
    lines: Arc<IrqLines>,
    irq: u8,
    bit: u64,
}

impl LevelIrqLine {
    /// Asserts (`true`) or deasserts (`false`) this source's level on its line.
    pub fn set_level(&self, asserted: bool) {
        let line = &self.lines.asserted[usize::from(self.irq)];
        if asserted {
            line.fetch_or(self.bit, Ordering::SeqCst);
        } else {
            line.fetch_and(!self.bit, Ordering::SeqCst);
        }
    }

    /// Whether this source currently asserts its line.
    pub fn is_asserted(&self) -> bool {
        self.lines.asserted[usize::from(self.irq)].load(Ordering::SeqCst) & self.bit != 0
    }
}

/// One ISA interrupt line, handed to a device so it can raise only its own IRQ.
#[derive(Clone, Debug)]
pub struct IrqLine {
    lines: Arc<IrqLines>,
    irq: u8,
}

impl IrqLine {
    /// Line `irq` (0..16) of `lines`; out-of-range lines are never raised.
    pub fn new(lines: Arc<IrqLines>, irq: u8) -> Self {
        Self { lines, irq }
    }

    /// Raises an edge on this line (see [`IrqLines::raise`]).
    pub fn raise(&self) {
        self.lines.raise(self.irq);
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.raise();
        Ok(())
    }
}

/// A device state that failed validation on restore.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {device} state: {reason}")]
pub struct StateError {
    /// The device whose state was refused, e.g. `"PIC master"`.
    pub device: &'static str,
    /// What is wrong with the state.
    pub reason: String,
}

impl StateError {
    /// An error for `device`, saying what is wrong in `reason`.
    pub fn new(device: &'static str, reason: impl Into<String>) -> Self {
        Self {
            device,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_lines_collect_and_drain() {
        let lines = IrqLines::new();
        IrqLine::new(lines.clone(), 4).raise();
        lines.raise(0);
        lines.raise(16); // out of range: ignored
        assert_eq!(lines.take(), 0b1_0001);
        assert_eq!(lines.take(), 0);
    }

    #[test]
    fn level_lines_are_wired_or() {
        let lines = IrqLines::new();
        let a = lines.level_line(10).unwrap();
        let b = lines.level_line(10).unwrap();
        assert!(lines.level_line(16).is_none());
        a.set_level(true);
        b.set_level(true);
        a.set_level(false);
        assert_eq!(lines.levels(), 1 << 10, "b still holds the line");
        assert!(!a.is_asserted() && b.is_asserted());
        b.set_level(false);
        assert_eq!(lines.levels(), 0);
        assert_eq!(lines.take(), 0, "levels are not edges");
    }

    #[test]
    fn level_sources_run_out_cleanly() {
        let lines = IrqLines::new();
        let held: Vec<_> = (0..64).map(|_| lines.level_line(5).unwrap()).collect();
        assert!(lines.level_line(5).is_none());
        drop(held);
    }
}
