//! The PC platform of the deterministic machine: the legacy devices, their places on the
//! buses, and the glue the vCPU loop uses (interrupt routing, serial input, stop requests).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ftvm_devices::{Clock, StateError};

use crate::bus::{lock, Bus, BusError};
use crate::stop::StopReason;

mod devices;
mod dma;
mod nic;
#[cfg(test)]
mod nic_tests;
mod pci;
#[cfg(test)]
mod tests;

pub use devices::{DeviceKind, DeviceState, PlatformDevice, PlatformState, PowerOn, Wiring};
use devices::{Devices, Staged};
pub use nic::{NicDeviceState, NicSetup};
pub use pci::{DiskBackend, DiskDeviceState, Pci, PciSetup, PciSetupError, PciState, PCI_IRQ};

/// Where the serial console's output goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// The console writer, shared so that a serial device rebuilt from a state (a checkpoint
/// delta being applied) keeps writing to the same place. It counts the bytes the guest
/// wrote (its position in the console stream): part of the machine state, so that a
/// backup put back in step by a checkpoint knows where the primary's console stands.
#[derive(Clone)]
pub struct SharedConsole {
    out: Arc<Mutex<ConsoleOut>>,
    position: Arc<AtomicU64>,
}

impl Write for SharedConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = lock(&self.out).write(buf);
        // The guest wrote the bytes whatever became of them.
        self.position.fetch_add(buf.len() as u64, Ordering::SeqCst);
        r.map(|_| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.out).flush()
    }
}

/// ISA line of the first serial port.
pub const SERIAL_IRQ: u8 = 4;
/// First I/O port of the first serial port (COM1).
pub const COM1_BASE: u64 = 0x3f8;

/// Why the platform could not be built or restored from a saved state.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Two devices' address ranges overlap, or one is empty.
    #[error("cannot place a device on the bus")]
    Bus(#[from] BusError),
    /// A device refused its saved state.
    #[error("cannot restore the devices")]
    State(#[from] StateError),
    /// The saved state has two entries for one device.
    #[error("invalid platform state: it lists the {0:?} device more than once")]
    Duplicate(DeviceKind),
    /// The saved state has no entry for a device.
    #[error("invalid platform state: the {0:?} device is missing")]
    Missing(DeviceKind),
    /// The PCI part could not be built or restored.
    #[error(transparent)]
    Pci(#[from] PciSetupError),
    /// The saved machine has another number of disks than this one is given.
    #[error("the saved machine has {saved} disks but {given} were given")]
    DiskCount {
        /// Disks in the saved machine.
        saved: usize,
        /// Disks given to this one.
        given: usize,
    },
    /// One of the saved machine and this one has a NIC and the other does not.
    #[error("the saved machine has {} but this one {}", nic_words(*.saved), nic_words(*.given))]
    NicPresence {
        /// Whether the saved machine has a NIC.
        saved: bool,
        /// Whether this one has.
        given: bool,
    },
}

fn nic_words(has: bool) -> &'static str {
    if has {
        "a NIC"
    } else {
        "no NIC"
    }
}

/// Whether a saved PCI part and the PCI configuration of this machine have the same
/// devices (disk count, NIC or not).
fn check_pci_match(saved: Option<&PciState>, disks: usize, nic: bool) -> Result<(), PlatformError> {
    let saved_disks = saved.map_or(0, |s| s.disks.len());
    if saved_disks != disks {
        return Err(PlatformError::DiskCount {
            saved: saved_disks,
            given: disks,
        });
    }
    let saved_nic = saved.is_some_and(|s| s.nic.is_some());
    if saved_nic != nic {
        return Err(PlatformError::NicPresence {
            saved: saved_nic,
            given: nic,
        });
    }
    Ok(())
}

/// The machine's devices (see the private `devices` module for the table of them) on their buses.
pub struct Platform {
    /// The port-I/O bus.
    pub pio: Bus,
    /// The MMIO bus.
    pub mmio: Bus,
    devices: Devices,
    wiring: Wiring,
    /// The PCI bus and its functions, on a machine with disks or a NIC.
    pci: Option<Pci>,
}

impl Platform {
    /// A freshly powered-on PC.
    pub fn new(
        clock: Arc<dyn Clock>,
        mem_mib: u64,
        wall_clock_unix_secs: u64,
        console: ConsoleOut,
        position: Arc<AtomicU64>,
        pci: Option<PciSetup>,
    ) -> Result<Self, PlatformError> {
        position.store(0, Ordering::SeqCst);
        let wiring = Wiring::new(clock, console, position);
        let power = PowerOn {
            mem_mib,
            wall_clock_unix_secs,
        };
        let staged = Staged::power_on(&wiring, &power);
        let pci = match pci {
            Some(setup) => Some(Pci::power_on(setup, &wiring.irq_lines)?),
            None => None,
        };
        let platform = Self::assemble(staged, wiring, pci)?;
        if platform.pci.is_some() {
            // As a PC's firmware does for the lines it routes PCI interrupts to.
            let mut elcr = [0u8];
            platform
                .pio
                .read(ftvm_devices::pic::ELCR_BASE + 1, &mut elcr);
            elcr[0] |= 1 << (PCI_IRQ - 8);
            platform.pio.write(ftvm_devices::pic::ELCR_BASE + 1, &elcr);
        }
        Ok(platform)
    }

    /// Devices restored from a saved state (validated on the way in).
    pub fn restore(
        state: PlatformState,
        clock: Arc<dyn Clock>,
        console: ConsoleOut,
        position: Arc<AtomicU64>,
        pci: Option<PciSetup>,
    ) -> Result<Self, PlatformError> {
        position.store(state.console_bytes, Ordering::SeqCst);
        let wiring = Wiring::new(clock, console, position);
        let saved_pci = state.pci.clone();
        check_pci_match(
            saved_pci.as_ref(),
            pci.as_ref().map_or(0, |p| p.disks.len()),
            pci.as_ref().is_some_and(|p| p.nic.is_some()),
        )?;
        let pci = match (saved_pci, pci) {
            (Some(saved), Some(setup)) => Some(Pci::restore(&saved, setup, &wiring.irq_lines)?),
            _ => None,
        };
        let staged = Staged::restore(state, &wiring)?;
        Self::assemble(staged, wiring, pci)
    }

    /// The disks' image backends, in device order (none without a PCI part).
    pub fn disk_backends(&self) -> Vec<crate::disk::FileBackend> {
        self.pci.as_ref().map_or_else(Vec::new, Pci::disk_backends)
    }

    fn assemble(staged: Staged, wiring: Wiring, pci: Option<Pci>) -> Result<Self, PlatformError> {
        let devices = Devices::new(staged);
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        devices.place(&mut pio, &mut mmio)?;
        match &pci {
            Some(pci) => pci.place(&mut pio, &mut mmio)?,
            None => {
                // Without a PCI bus, configuration mechanism #1 is one more absent range.
                let (base, len) = ftvm_devices::PCI_CONFIG_PORTS;
                pio.insert(devices.absent.clone(), base, len)?;
            }
        }
        Ok(Self {
            pio,
            mmio,
            devices,
            wiring,
            pci,
        })
    }

    /// Every device's state and the console position, to save.
    pub fn state(&self) -> PlatformState {
        self.devices.state(
            self.wiring.console.position.load(Ordering::SeqCst),
            self.pci.as_ref().map(Pci::state),
        )
    }

    /// Let the PCI functions handle what the guest's last write asked of them (a queue
    /// notify): called after every port or MMIO write exit. Returns requests completed.
    pub fn process_devices(&self) -> usize {
        self.pci.as_ref().map_or(0, Pci::process)
    }

    /// The NIC's MAC, on a machine with one.
    pub fn nic_mac(&self) -> Option<[u8; 6]> {
        self.pci.as_ref().and_then(Pci::nic_mac)
    }

    /// Offer a received frame to the NIC: call only at a point the log names, and log the
    /// outcome. None: the machine has no NIC.
    pub fn deliver_frame(
        &self,
        frame: &[u8],
    ) -> Option<Result<ftvm_devices::virtio::Delivery, ftvm_devices::virtio::VirtioError>> {
        self.pci.as_ref()?.deliver_frame(frame)
    }

    /// Guest pages devices wrote since the last call (not in KVM's dirty log).
    pub fn take_device_pages(&self) -> Vec<u64> {
        self.pci
            .as_ref()
            .map_or_else(Vec::new, Pci::take_written_pages)
    }

    /// A device asked to end the VM (power-off, reset).
    pub fn stop_request(&self) -> Option<StopReason> {
        if let Some(status) = lock(&self.devices.sysctl).take_poweroff() {
            return Some(StopReason::PowerOff { status });
        }
        if lock(&self.devices.i8042).take_reset_request() {
            return Some(StopReason::Reset);
        }
        None
    }

    /// Move pending serial input into the UART, as much as its FIFO takes; returns the
    /// bytes moved (what a recording VMM logs).
    pub fn feed_serial(&self, input: &mut VecDeque<u8>) -> Vec<u8> {
        if input.is_empty() {
            return Vec::new();
        }
        let mut serial = lock(&self.devices.serial);
        let (front, _) = input.as_slices();
        let taken = serial.enqueue_input(front);
        input.drain(..taken).collect()
    }

    /// Replace every device's state in place (devices stay on the buses, the console
    /// keeps its writer). The state is validated first; on error nothing changes.
    pub fn load_state(&self, state: PlatformState) -> Result<(), PlatformError> {
        let console_bytes = state.console_bytes;
        check_pci_match(
            state.pci.as_ref(),
            self.pci.as_ref().map_or(0, Pci::disk_count),
            self.nic_mac().is_some(),
        )?;
        let pci = match (&self.pci, &state.pci) {
            (Some(pci), Some(saved)) => Some((pci, pci.stage(saved)?)),
            _ => None,
        };
        let staged = Staged::restore(state, &self.wiring)?;
        self.devices.replace(staged);
        if let Some((pci, staged)) = pci {
            // Checkpoints keep this machine's own disk CRC (see `Pci::replace`).
            pci.replace(staged, false)?;
        }
        self.wiring
            .console
            .position
            .store(console_bytes, Ordering::SeqCst);
        self.wiring.irq_lines.take();
        Ok(())
    }

    /// Move device IRQ edges into the PIC and raise the timer edge if one is due.
    ///
    /// A due timer edge also waits while another line is requested: the PIC's fixed
    /// priority gives IRQ0 every tie, and a guest whose tick handler takes about a tick
    /// period (an emulated kernel) would otherwise see nothing but timer interrupts, its
    /// UART's transmit interrupt never (measured: a restored stock kernel's console went
    /// silent for good after a `sleep`). The PIT keeps the edge; it is raised once the
    /// other request has been taken. Everything this looks at is guest state, so a replay
    /// decides alike.
    pub fn update_interrupts(&self) {
        let mut pic = lock(&self.devices.pic);
        let raised = self.wiring.irq_lines.take();
        for irq in 0..16u8 {
            if raised & (1 << irq) != 0 {
                pic.raise_irq(irq);
            }
        }
        if self.pci.is_some() {
            let levels = self.wiring.irq_lines.levels();
            pic.set_irq_level(PCI_IRQ, levels & (1 << PCI_IRQ) != 0);
        }
        let others_waiting = pic.requested_lines() & !1 != 0;
        if !others_waiting && lock(&self.devices.pit).poll_irq0() {
            pic.raise_irq(0);
        }
    }

    /// Whether the PIC has an interrupt for the CPU to acknowledge.
    pub fn interrupt_pending(&self) -> bool {
        lock(&self.devices.pic).has_pending_interrupt()
    }

    /// The INTA cycle: the vector to inject.
    pub fn acknowledge(&self) -> Option<u8> {
        lock(&self.devices.pic).acknowledge()
    }

    /// The interrupt path as it stands, for a report when a guest stops answering: the
    /// PIC's request, mask and in-service bits and the UART's registers.
    pub fn interrupt_view(&self) -> String {
        let pic = lock(&self.devices.pic).state();
        let serial = lock(&self.devices.serial).state();
        format!(
            "PIC master irr {:#04x} imr {:#04x} isr {:#04x}, slave irr {:#04x} imr {:#04x} isr {:#04x}; \
             UART ier {:#04x} iir {:#04x} lsr {:#04x}, {} bytes unread",
            pic.master.irr,
            pic.master.imr,
            pic.master.isr,
            pic.slave.irr,
            pic.slave.imr,
            pic.slave.isr,
            serial.interrupt_enable,
            serial.interrupt_identification,
            serial.line_status,
            serial.in_buffer.len()
        )
    }

    /// When the next timer interrupt is due (virtual ns).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        lock(&self.devices.pit).next_irq0_deadline_ns()
    }
}
