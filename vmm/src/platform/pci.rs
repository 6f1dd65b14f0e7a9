//! The PCI part of the platform, present only when the machine has disks or a NIC: the
//! host bridge (configuration mechanism #1 at 0xcf8), one virtio-blk function per `--disk`
//! (devices 1, 2, ...), then the virtio-net function of `--net` (see [`super::nic`]), their
//! BARs in the MMIO window and their INTx pins on ISA line [`PCI_IRQ`] (level-triggered, as
//! firmware sets the ELCR for PCI lines).
//!
//! Requests complete synchronously at the exit of the driver's notify write (or a write
//! through the PCI_CFG window): [`Pci::process`] runs right after every port or MMIO write,
//! so the completion and its interrupt happen at a synchronous exit the log already names
//! and a replayer verifies.
//!
//! Devices write guest memory (disk reads) through a second view of the guest's RAM whose
//! bitmap marks the pages written: KVM's dirty log does not see those writes, so
//! checkpoint deltas add [`Pci::take_written_pages`].

use std::sync::{Arc, Mutex};

use ftvm_devices::pci::{
    PciFunction, CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN, DEFAULT_MMIO_WINDOW_LEN,
    DEFAULT_MMIO_WINDOW_START,
};
use ftvm_devices::virtio::{Block, BlockState, Delivery, VirtioError, VirtioPciState};
use ftvm_devices::{IrqLines, LevelIrqLine, PciBus, PciBusState, PciMmio, VirtioPci};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::dma::{dma_view, DmaMemory};
use crate::bus::{lock, Bus, BusError, SharedDevice};
use crate::disk::FileBackend;

use super::nic::{Nic, NicDeviceState, NicSetup};

/// The ISA line every PCI function's INTA# is routed to (shared, wired-OR).
pub const PCI_IRQ: u8 = 10;

type BlockFunction = VirtioPci<Block<FileBackend>>;

/// Why the PCI part of the platform could not be built or restored.
#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    /// The bus could not be created or refused a function.
    #[error("cannot set up the PCI bus: {0}")]
    Pci(#[from] ftvm_devices::pci::PciError),
    /// The virtio-net function could not be created.
    #[error("cannot create the virtio-net function: {0}")]
    Net(#[source] VirtioError),
    /// A virtio-blk function could not be created.
    #[error("cannot create virtio-blk function {index}: {source}")]
    Virtio {
        /// Index of the disk (its order among `--disk`s).
        index: usize,
        /// The device's error.
        #[source]
        source: ftvm_devices::virtio::VirtioError,
    },
    /// No interrupt source was left on the PCI line for the function with this index.
    #[error("no free interrupt source for PCI function {0}")]
    NoIrqSource(usize),
    /// The second view of guest memory that devices write through could not be made.
    #[error("cannot map guest memory for device writes: {0}")]
    Dma(String),
}

/// A disk as the machine's configuration gives it.
#[derive(Clone)]
pub struct DiskBackend {
    /// The opened image file.
    pub backend: FileBackend,
    /// Whether the guest sees the disk as read-only.
    pub read_only: bool,
}

/// What the platform needs to build its PCI part.
pub struct PciSetup {
    /// One virtio-blk function per disk, in this order.
    pub disks: Vec<DiskBackend>,
    /// The virtio-net function, if the machine has a NIC.
    pub nic: Option<NicSetup>,
    /// Guest memory, which the devices read and write.
    pub memory: GuestMemoryMmap,
}

/// One disk's saved device: the virtio-pci function and the backend's running CRC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskDeviceState {
    /// The virtio-pci function with its virtio-blk device.
    pub function: VirtioPciState<BlockState>,
    /// The backend's running CRC32 of the guest's disk I/O.
    pub io_crc: u32,
}

/// The saved PCI part: the bus's registers and each function, in device-number order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciState {
    /// The bus's own registers (configuration address, host bridge).
    pub bus: PciBusState,
    /// Each disk's function, in device order.
    pub disks: Vec<DiskDeviceState>,
    /// The NIC, on a machine with one (absent from states saved before NICs existed).
    #[serde(default)]
    pub nic: Option<NicDeviceState>,
}

struct Disk {
    function: Arc<Mutex<BlockFunction>>,
    config: DiskBackend,
    /// The function's INTx source, kept to give to a function rebuilt from a state.
    line: LevelIrqLine,
}

impl Disk {
    fn new(function: BlockFunction, config: DiskBackend, line: LevelIrqLine) -> Self {
        Self {
            function: Arc::new(Mutex::new(function)),
            config,
            line,
        }
    }

    /// The function as the PCI bus holds it.
    fn pci(&self) -> Arc<Mutex<dyn PciFunction>> {
        self.function.clone()
    }
}

/// The live PCI part: the bus, its disk and NIC functions, and the view of guest memory
/// they write through.
pub struct Pci {
    bus: Arc<Mutex<PciBus>>,
    disks: Vec<Disk>,
    nic: Option<Nic>,
    dma: DmaMemory,
    /// Keeps the mappings `dma` points into alive.
    _memory: GuestMemoryMmap,
}

fn serial(index: usize) -> String {
    format!("ftvm-disk{index}")
}

impl Pci {
    /// A freshly powered-on bus with one virtio-blk function per disk.
    pub fn power_on(setup: PciSetup, irq_lines: &Arc<IrqLines>) -> Result<Self, PciSetupError> {
        let (start, len) = (DEFAULT_MMIO_WINDOW_START, DEFAULT_MMIO_WINDOW_LEN);
        let mut bus = PciBus::new(start, len)?;
        let mut disks = Vec::new();
        for (index, config) in setup.disks.into_iter().enumerate() {
            let line = irq_lines
                .level_line(PCI_IRQ)
                .ok_or(PciSetupError::NoIrqSource(index))?;
            let block = Block::new(config.backend.clone(), config.read_only, &serial(index));
            let f = VirtioPci::new(block, line.clone())
                .map_err(|source| PciSetupError::Virtio { index, source })?;
            let disk = Disk::new(f, config, line);
            bus.add_function(disk.pci(), PCI_IRQ)?;
            disks.push(disk);
        }
        let nic = match setup.nic {
            Some(nic) => {
                let line = irq_lines
                    .level_line(PCI_IRQ)
                    .ok_or(PciSetupError::NoIrqSource(disks.len()))?;
                let nic = Nic::power_on(nic, line).map_err(PciSetupError::Net)?;
                bus.add_function(nic.pci(), PCI_IRQ)?;
                Some(nic)
            }
            None => None,
        };
        Self::assemble(bus, disks, nic, setup.memory)
    }

    fn assemble(
        bus: PciBus,
        disks: Vec<Disk>,
        nic: Option<Nic>,
        memory: GuestMemoryMmap,
    ) -> Result<Self, PciSetupError> {
        Ok(Self {
            bus: Arc::new(Mutex::new(bus)),
            disks,
            nic,
            dma: dma_view(&memory).map_err(PciSetupError::Dma)?,
            _memory: memory,
        })
    }

    /// How many virtio-blk functions the bus has.
    pub fn disk_count(&self) -> usize {
        self.disks.len()
    }

    /// The disks' image backends, in device order (shared with the devices).
    pub fn disk_backends(&self) -> Vec<FileBackend> {
        self.disks
            .iter()
            .map(|d| d.config.backend.clone())
            .collect()
    }

    /// The NIC's MAC, on a machine with one.
    pub fn nic_mac(&self) -> Option<[u8; 6]> {
        self.nic.as_ref().map(|n| n.setup.mac)
    }

    /// Offer a received frame to the NIC (None: there is none).
    pub fn deliver_frame(&self, frame: &[u8]) -> Option<Result<Delivery, VirtioError>> {
        Some(self.nic.as_ref()?.deliver(&self.dma, frame))
    }

    /// The bus's and every function's state, to save.
    pub fn state(&self) -> PciState {
        PciState {
            bus: lock(&self.bus).state(),
            disks: self
                .disks
                .iter()
                .map(|d| DiskDeviceState {
                    function: lock(&d.function).state(),
                    io_crc: d.config.backend.io_crc(),
                })
                .collect(),
            nic: self.nic.as_ref().map(Nic::state),
        }
    }

    /// Register the configuration ports and the MMIO window.
    pub fn place(&self, pio: &mut Bus, mmio: &mut Bus) -> Result<(), BusError> {
        pio.insert(
            self.bus.clone() as SharedDevice,
            CONFIG_ADDRESS_PORT,
            CONFIG_PORTS_LEN,
        )?;
        let (start, len) = lock(&self.bus).window();
        let window = Arc::new(Mutex::new(PciMmio::new(self.bus.clone())));
        mmio.insert(window as SharedDevice, start, len)
    }

    /// Handle every queue the driver notified. A driver that broke the virtio contract
    /// leaves its device in NEEDS_RESET (already signalled to the guest): reported, and the
    /// machine goes on. Returns the requests completed.
    pub fn process(&self) -> usize {
        let mut done = 0;
        for (index, disk) in self.disks.iter().enumerate() {
            let mut f = lock(&disk.function);
            if !f.has_pending() {
                continue;
            }
            match f.process(&self.dma) {
                Ok(n) => done += n,
                Err(e) => tracing::warn!(
                    disk = index,
                    "virtio-blk: the guest driver broke the device: {e}"
                ),
            }
            if let Some(e) = f.device_mut().take_last_error() {
                tracing::warn!(disk = index, "virtio-blk request failed: {e}");
            }
        }
        if let Some(nic) = &self.nic {
            done += nic.process(&self.dma);
        }
        done
    }

    /// Pages devices wrote since the last call (guest-physical addresses).
    pub fn take_written_pages(&self) -> Vec<u64> {
        super::dma::take_written_pages(&self.dma)
    }
}

mod restore;
