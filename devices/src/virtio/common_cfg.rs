//! The common configuration structure (virtio 1.2, 4.1.4.3): feature negotiation, the
//! device status and queue setup.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_FAILED, VIRTIO_F_VERSION_1,
};
use virtio_queue::QueueT;

use super::transport::{COMMON_LEN, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET};
use super::{VirtioDevice, VirtioPci, VIRTIO_MSI_NO_VECTOR};

impl<D: VirtioDevice> VirtioPci<D> {
    pub(super) fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits virtio does not define are not kept: restoring refuses a status with them,
        // so a guest that set one would make every saved state of its machine unusable.
        let defined =
            (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FAILED) as u8
                | STATUS_DRIVER_OK
                | STATUS_FEATURES_OK;
        let mut value = value & defined | self.status & STATUS_NEEDS_RESET;
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // FEATURES_OK sticks only for a subset of what is offered, with VERSION_1: the
            // driver reads the status back and gives up otherwise (virtio 1.2, 3.1.1).
            let offered = self.device_features();
            let modern = self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if self.driver_features & !offered != 0 || !modern {
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
    }

    pub(super) fn common_image(&self) -> [u8; COMMON_LEN] {
        let mut c = [0u8; COMMON_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            c[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        let features = match self.device_feature_select {
            0 => self.device_features() as u32,
            1 => (self.device_features() >> 32) as u32,
            _ => 0,
        };
        let driver = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(0x00, &self.device_feature_select.to_le_bytes());
        put(0x04, &features.to_le_bytes());
        put(0x08, &self.driver_feature_select.to_le_bytes());
        put(0x0c, &driver.to_le_bytes());
        put(0x10, &VIRTIO_MSI_NO_VECTOR.to_le_bytes());
        put(0x12, &(self.queues.len() as u16).to_le_bytes());
        put(0x14, &[self.status, 0]);
        put(0x16, &self.queue_select.to_le_bytes());
        if let Some(q) = self.queues.get(usize::from(self.queue_select)) {
            put(0x18, &q.size().to_le_bytes());
            put(0x1a, &VIRTIO_MSI_NO_VECTOR.to_le_bytes());
            put(0x1c, &u16::from(q.ready()).to_le_bytes());
            put(0x1e, &self.queue_select.to_le_bytes());
            put(0x20, &q.desc_table().to_le_bytes());
            put(0x28, &q.avail_ring().to_le_bytes());
            put(0x30, &q.used_ring().to_le_bytes());
        }
        c
    }

    pub(super) fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let configurable = self.status & STATUS_DRIVER_OK == 0;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features &= !(0xffff_ffffu64 << shift);
                self.driver_features |= (v & 0xffff_ffff) << shift;
            }
            (0x14, 1) => self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            _ if !configurable => {}
            (0x18..=0x37, _) => self.queue_write(offset, data.len(), v),
            // msix_config, queue_msix_vector (no MSI-X), read-only fields, odd widths.
            _ => {}
        }
    }

    /// Queue configuration of the selected queue. virtio-queue checks what the driver
    /// writes (power-of-two sizes up to the maximum, ring alignment) and keeps the old
    /// value when it is wrong. The 64-bit ring addresses come as one 8-byte write or as
    /// two 4-byte halves.
    fn queue_write(&mut self, offset: u64, width: usize, v: u64) {
        let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        let (low, high) = match (offset % 8, width) {
            (0, 8) => (Some(v as u32), Some((v >> 32) as u32)),
            (0, 4) => (Some(v as u32), None),
            (4, 4) => (None, Some(v as u32)),
            _ => (None, None),
        };
        match (offset, width) {
            (0x18, 2) => q.set_size(v as u16),
            (0x1c, 2) if v == 1 => q.set_ready(true),
            (0x20..=0x27, _) => q.set_desc_table_address(low, high),
            (0x28..=0x2f, _) => q.set_avail_ring_address(low, high),
            (0x30..=0x37, _) => q.set_used_ring_address(low, high),
            _ => {}
        }
    }
}
