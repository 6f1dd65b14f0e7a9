//! Saving and restoring a virtio-pci function.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{VirtioDevice, VirtioPci, ISR_CONFIG, ISR_QUEUE};
use crate::pci::ConfigSpaceState;
use crate::{LevelIrqLine, StateError};

/// virtio-queue's `QueueState`, with serde.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct VirtioQueueState {
    /// Largest size the device allows for the queue.
    pub max_size: u16,
    /// Queue size the driver chose, in descriptors.
    pub size: u16,
    /// The driver enabled the queue (queue_enable).
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used (device) ring.
    pub used_ring: u64,
    /// Available-ring index of the next chain the device takes (wrapping u16).
    pub next_avail: u16,
    /// Used-ring index of the next entry the device fills (wrapping u16).
    pub next_used: u16,
}

/// Saved state of a [`VirtioPci`] function: the transport's registers and queues, and
/// the device's own state `S`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VirtioPciState<S> {
    /// The PCI configuration space.
    pub config: ConfigSpaceState,
    /// The device status register (virtio `VIRTIO_CONFIG_S_*` bits).
    pub status: u8,
    /// Which 32-bit half of the device features the common configuration shows.
    pub device_feature_select: u32,
    /// Which 32-bit half of the driver features the common configuration shows.
    pub driver_feature_select: u32,
    /// Feature bits the driver wrote.
    pub driver_features: u64,
    /// The queue the common configuration's queue registers refer to.
    pub queue_select: u16,
    /// The ISR status ([`ISR_QUEUE`], [`ISR_CONFIG`]), cleared when the driver reads it.
    pub isr: u8,
    /// Queues notified but not processed yet, one bit each.
    pub pending: u64,
    /// The queues, in index order.
    pub queues: Vec<VirtioQueueState>,
    /// Times the driver broke the contract and the device went to NEEDS_RESET.
    pub failures: u64,
    /// The device's own state.
    pub device: S,
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// Saves the state of the function and of its device.
    pub fn state(&self) -> VirtioPciState<D::State> {
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let s = q.state();
                VirtioQueueState {
                    max_size: s.max_size,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                }
            })
            .collect();
        VirtioPciState {
            config: self.config.state(),
            status: self.status,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            isr: self.isr,
            pending: self.pending,
            queues,
            failures: self.failures,
            device: self.device.state(),
        }
    }

    /// Rebuilds the function from `device` (made by the VMM from its configuration: the
    /// same disk, the same MAC) and a saved state, which is checked against it.
    pub fn from_state(
        device: D,
        irq: LevelIrqLine,
        state: &VirtioPciState<D::State>,
    ) -> Result<Self, StateError> {
        let err = |reason: String| StateError::new("virtio-pci", reason);
        let mut f = Self::new(device, irq).map_err(|e| err(e.to_string()))?;
        f.config
            .restore(&state.config)
            .map_err(|e| err(e.to_string()))?;
        if state.queues.len() != f.queues.len() {
            return Err(err(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                f.queues.len()
            )));
        }
        for (i, (q, s)) in f.queues.iter_mut().zip(&state.queues).enumerate() {
            if s.max_size != q.max_size() {
                return Err(err(format!("queue {i} max size {} saved", s.max_size)));
            }
            *q = Queue::try_from(QueueState {
                max_size: s.max_size,
                next_avail: s.next_avail,
                next_used: s.next_used,
                // VIRTIO_RING_F_EVENT_IDX is never offered.
                event_idx_enabled: false,
                size: s.size,
                ready: s.ready,
                desc_table: s.desc_table,
                avail_ring: s.avail_ring,
                used_ring: s.used_ring,
            })
            .map_err(|e| err(format!("queue {i}: {e}")))?;
        }
        let known_status = ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | NEEDS_RESET | FAILED;
        if state.status & !(known_status as u8) != 0 {
            return Err(err(format!("device status {:#x}", state.status)));
        }
        let modern = state.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
        if state.status & FEATURES_OK as u8 != 0 && !modern {
            return Err(err("FEATURES_OK without VIRTIO_F_VERSION_1".to_string()));
        }
        if state.isr & !(ISR_QUEUE | ISR_CONFIG) != 0 {
            return Err(err(format!("isr {:#x}", state.isr)));
        }
        let known_queues = u64::MAX
            .checked_shr(64 - f.queues.len() as u32)
            .unwrap_or(0);
        if state.pending & !known_queues != 0 {
            return Err(err(format!("pending {:#x}", state.pending)));
        }
        // The driver may write any bits while negotiating (the device then refuses
        // FEATURES_OK), so a state saved then holds them; only an accepted negotiation
        // guarantees a subset of what is offered.
        let accepted = state.status & FEATURES_OK as u8 != 0;
        if accepted && state.driver_features & !f.device_features() != 0 {
            return Err(err(format!("driver features {:#x}", state.driver_features)));
        }
        f.device.restore(&state.device)?;
        f.status = state.status;
        f.device_feature_select = state.device_feature_select;
        f.driver_feature_select = state.driver_feature_select;
        f.driver_features = state.driver_features;
        f.queue_select = state.queue_select;
        f.isr = state.isr;
        f.pending = state.pending;
        f.failures = state.failures;
        // The line is a level: asserting it again on restore is exactly the saved state.
        f.update_line();
        Ok(f)
    }
}
