//! The virtio-pci modern transport (virtio 1.2, 4.1) over INTx.
//!
//! BAR0 (32-bit memory, 16 KiB) holds four 4 KiB regions, each announced by a vendor
//! capability: common configuration, ISR status, device configuration and notifications
//! (one 4-byte slot per queue: `queue_notify_off` = queue index, multiplier 4).
//! No MSI-X capability: the driver falls back to INTx, and msix vectors read NO_VECTOR.
//! A fifth capability, VIRTIO_PCI_CAP_PCI_CFG, is the window through configuration space
//! into BAR0 that the spec requires of every device (Linux does not use it).
//!
//! Interrupts: the ISR is read-to-clear and INTx is level-triggered, so the line is a
//! [`LevelIrqLine`] asserted exactly while the ISR is non-zero (and INTx is not disabled
//! in the command register). An edge per completion would be lost when two functions
//! share a line or when a completion arrives while the line is already high; a level is
//! what PCI specifies and, with the line marked level-triggered in the ELCR, the i8259
//! keeps requesting until the driver's ISR read drops it.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use super::*;
use crate::pci::{BarKind, ConfigSpace, PciFunction, PciIds, PIN_INTA};
use crate::LevelIrqLine;

pub const BAR0_SIZE: u64 = 0x4000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const REGION_LEN: u64 = 0x1000;
const NOTIFY_MULTIPLIER: u32 = 4;
/// `struct virtio_pci_common_cfg` up to queue_device (0x38 bytes), rounded to 0x40.
pub(super) const COMMON_LEN: usize = 0x40;

/// Capability types of `struct virtio_pci_cap` (not in virtio-bindings).
const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// In `struct virtio_pci_cfg_cap`: cap.bar, cap.offset, cap.length, pci_cfg_data.
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;
const PCI_CFG_DATA: usize = 16;

pub(super) const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub(super) const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub(super) const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// A virtio device as a PCI function: configuration space, common configuration, ISR,
/// queues and the INTx line.
pub struct VirtioPci<D> {
    pub(super) config: ConfigSpace,
    pub(super) device: D,
    pub(super) irq: LevelIrqLine,
    pub(super) status: u8,
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) driver_features: u64,
    pub(super) queue_select: u16,
    pub(super) isr: u8,
    pub(super) pending: u64,
    pub(super) queues: Vec<Queue>,
    pub(super) failures: u64,
    /// Where the VIRTIO_PCI_CAP_PCI_CFG capability sits in configuration space.
    pci_cfg: usize,
}

fn capability(cfg_type: u8, offset: u64, multiplier: Option<u32>) -> Vec<u8> {
    let mut cap = vec![CAP_VENDOR, 0, 16, cfg_type, 0, 0, 0, 0];
    cap.extend_from_slice(&(offset as u32).to_le_bytes());
    cap.extend_from_slice(&(REGION_LEN as u32).to_le_bytes());
    if let Some(m) = multiplier {
        cap[2] = 20;
        cap.extend_from_slice(&m.to_le_bytes());
    }
    cap
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// A function for `device`, interrupting through `irq` (the VMM also passes that
    /// line's number to `PciBus::add_function`, which writes it in Interrupt Line).
    pub fn new(device: D, irq: LevelIrqLine) -> Result<Self, VirtioError> {
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(VirtioError::BadQueueLayout(sizes.len()));
        }
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| VirtioError::BadQueueLayout(sizes.len()))?;
        let mut config = ConfigSpace::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE + device.device_type() as u16,
            revision: VIRTIO_PCI_REVISION,
            class: device.pci_class(),
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: VIRTIO_PCI_SUBSYSTEM,
        });
        config.add_bar(0, BAR0_SIZE, BarKind::Memory32)?;
        config.set_interrupt_pin(PIN_INTA);
        config.add_capability(&capability(CAP_COMMON_CFG, COMMON_OFFSET, None))?;
        let notify = Some(NOTIFY_MULTIPLIER);
        config.add_capability(&capability(CAP_NOTIFY_CFG, NOTIFY_OFFSET, notify))?;
        config.add_capability(&capability(CAP_ISR_CFG, ISR_OFFSET, None))?;
        config.add_capability(&capability(CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, None))?;
        // The driver fills in bar, offset and length, then reads or writes the data.
        let mut window = capability(CAP_PCI_CFG, 0, Some(0));
        window[PCI_CFG_LENGTH..PCI_CFG_DATA].fill(0);
        let pci_cfg = config.add_capability(&window)?;
        config.set_writable(pci_cfg + PCI_CFG_BAR, 1);
        config.set_writable(pci_cfg + PCI_CFG_OFFSET, 12);
        irq.set_level(false);
        Ok(Self {
            config,
            device,
            irq,
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            isr: 0,
            pending: 0,
            queues,
            failures: 0,
            pci_cfg,
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for changes (e.g. to take a block device's last error).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register (virtio `VIRTIO_CONFIG_S_*` bits).
    pub fn device_status(&self) -> u8 {
        self.status
    }

    /// Times the device went to NEEDS_RESET because of what the driver did.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    pub(super) fn device_features(&self) -> u64 {
        self.device.features() | 1 << VIRTIO_F_VERSION_1
    }

    /// Whether a notify write is waiting for [`VirtioPci::process`].
    pub fn has_pending(&self) -> bool {
        self.pending != 0
    }

    /// The driver agreed on features and started the device, which has not failed since.
    pub(super) fn running(&self) -> bool {
        let live = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        self.status & (live | STATUS_NEEDS_RESET) == live
    }

    /// Handles every notified queue. Called by the VMM at the exit of the notify write
    /// (completion is synchronous). Returns the number of chains completed; an error means
    /// the driver broke the contract and the device now needs a reset (already signalled
    /// to the guest): the VMM reports it and goes on.
    pub fn process<M: GuestMemory>(&mut self, mem: &M) -> Result<usize, VirtioError> {
        let pending = std::mem::take(&mut self.pending);
        let mut done = 0;
        let mut result = Ok(());
        if self.running() {
            for (index, queue) in self.queues.iter_mut().enumerate() {
                if pending & (1 << index) == 0 || !queue.ready() {
                    continue;
                }
                if !queue.is_valid(mem) {
                    result = Err(VirtioError::QueueInvalid { queue: index });
                    break;
                }
                match self.device.process_queue(index, queue, mem) {
                    Ok(n) => done += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if done > 0 {
            self.signal(ISR_QUEUE);
        }
        result.map(|()| done).inspect_err(|_| self.fail())
    }

    /// Raises the interrupt for `reason` (ISR bits).
    pub(super) fn signal(&mut self, reason: u8) {
        self.isr |= reason;
        self.update_line();
    }

    /// DEVICE_NEEDS_RESET (virtio 1.2, 2.1.2): set the bit, and tell a running driver
    /// through a configuration-change interrupt.
    pub(super) fn fail(&mut self) {
        self.failures += 1;
        let was_running = self.status & STATUS_DRIVER_OK != 0;
        self.status |= STATUS_NEEDS_RESET;
        if was_running {
            self.signal(ISR_CONFIG);
        }
    }

    pub(super) fn update_line(&mut self) {
        let pending = self.isr != 0;
        self.config.set_interrupt_status(pending);
        self.irq.set_level(pending && !self.config.intx_disabled());
    }

    pub(super) fn reset(&mut self) {
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.isr = 0;
        self.pending = 0;
        self.queues.iter_mut().for_each(Queue::reset);
        self.device.reset();
        self.update_line();
    }
}

impl<D: VirtioDevice> VirtioPci<D> {
    fn touches_pci_cfg_data(&self, offset: usize, len: usize) -> bool {
        let data = self.pci_cfg + PCI_CFG_DATA;
        offset < data + 4 && offset.saturating_add(len) > data
    }

    /// The BAR0 access (offset, length) the driver set up in the PCI_CFG capability, if
    /// it is one the spec allows: BAR 0, 1, 2 or 4 bytes, offset aligned to the length.
    fn pci_cfg_target(&self) -> Option<(u64, usize)> {
        let mut cap = [0u8; PCI_CFG_DATA];
        self.config.read(self.pci_cfg, &mut cap);
        let field =
            |at: usize| u32::from_le_bytes([cap[at], cap[at + 1], cap[at + 2], cap[at + 3]]);
        let (offset, length) = (field(PCI_CFG_OFFSET), field(PCI_CFG_LENGTH));
        let valid = cap[PCI_CFG_BAR] == 0 && matches!(length, 1 | 2 | 4) && offset % length == 0;
        valid.then_some((u64::from(offset), length as usize))
    }
}

impl<D: VirtioDevice> PciFunction for VirtioPci<D> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if self.touches_pci_cfg_data(offset, data.len()) {
            if let Some((at, len)) = self.pci_cfg_target() {
                let mut buf = [0u8; 4];
                self.bar_read(0, at, &mut buf[..len]);
                self.config.write(self.pci_cfg + PCI_CFG_DATA, &buf[..len]);
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        if self.touches_pci_cfg_data(offset, data.len()) {
            if let Some((at, len)) = self.pci_cfg_target() {
                let mut buf = [0u8; 4];
                self.config.read(self.pci_cfg + PCI_CFG_DATA, &mut buf);
                self.bar_write(0, at, &buf[..len]);
            }
        }
        // The command register's INTx disable bit gates the line.
        self.update_line();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        let (region, at) = (offset / REGION_LEN * REGION_LEN, offset % REGION_LEN);
        match region {
            COMMON_OFFSET => {
                read_window(&self.common_image(), at, data);
            }
            ISR_OFFSET if at == 0 && !data.is_empty() => {
                data[0] = std::mem::take(&mut self.isr);
                self.update_line();
            }
            DEVICE_CFG_OFFSET => self.device.read_config(at, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 || !matches!(data.len(), 1 | 2 | 4 | 8) {
            return;
        }
        let (region, at) = (offset / REGION_LEN * REGION_LEN, offset % REGION_LEN);
        match region {
            COMMON_OFFSET => self.common_write(at, data),
            NOTIFY_OFFSET => {
                let queue = at / u64::from(NOTIFY_MULTIPLIER);
                if queue < self.queues.len() as u64 {
                    self.pending |= 1 << queue;
                }
            }
            // Device configuration is read-only for blk and net; the ISR is read-only.
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
