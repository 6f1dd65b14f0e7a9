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

pub mod absent;
pub mod cmos;
pub mod i8042;
pub mod pic;
pub mod pit;
pub mod serial;
pub mod sysctl;
#[cfg(test)]
pub(crate) mod testing;

pub use absent::{AbsentPorts, AbsentPortsState, ABSENT_PORT_RANGES};
pub use cmos::{Cmos, CmosState};
pub use i8042::{I8042State, I8042};
pub use pic::{Pic, PicState};
pub use pit::{Pit, PitState};
pub use serial::{Serial, SerialState};
pub use sysctl::{SysCtl, SysCtlState};

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// A device on the port-I/O or MMIO bus.
///
/// `base` is the start of the range the device was registered at (so one device can sit at
/// several ranges, e.g. the PIT at 0x40 and port 0x61) and `offset` is relative to it.
/// Accesses of a width the device does not implement read as all ones and are ignored on
/// write; a device never panics on what a guest does.
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Virtual time as the guest sees it, in nanoseconds since the machine was created.
///
/// The VMM decides what time is (host monotonic time, a function of the exit ordinal for
/// deterministic tests, or values replayed from a log); devices only ask.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// Edge-triggered interrupt requests raised by devices, waiting to be moved into the PIC.
///
/// Devices raise lines at any time; the vCPU loop drains them into the PIC only at a
/// synchronous exit, which keeps the moment an interrupt becomes visible deterministic.
#[derive(Debug, Default)]
pub struct IrqLines {
    raised: AtomicU16,
}

impl IrqLines {
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
}

/// One ISA interrupt line, handed to a device so it can raise only its own IRQ.
#[derive(Clone, Debug)]
pub struct IrqLine {
    lines: Arc<IrqLines>,
    irq: u8,
}

impl IrqLine {
    pub fn new(lines: Arc<IrqLines>, irq: u8) -> Self {
        Self { lines, irq }
    }

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
    pub device: &'static str,
    pub reason: String,
}

impl StateError {
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
}
