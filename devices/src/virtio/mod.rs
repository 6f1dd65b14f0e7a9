//! Virtio devices on the modern (virtio 1.x) PCI transport.
//!
//! [`VirtioPci`] is a [`crate::pci::PciFunction`]: it owns the PCI configuration space,
//! the common configuration, the ISR and the queues (virtio-queue's `Queue`), and drives
//! a [`VirtioDevice`] (block, net) that only understands requests.
//!
//! Guest memory is not owned: it is a parameter of the calls that touch the rings
//! ([`VirtioPci::process`] and the net receive path). A notify write over MMIO only marks
//! the queue; the VMM calls `process` right after that exit, so requests complete
//! synchronously at the notify exit, which is a point the log can name. Not owning memory
//! keeps the state plain data for snapshots, and lets the VMM pass a memory whose bitmap
//! records the pages devices write (they are not in KVM's dirty log).
//!
//! Wiring, for the VMM:
//! 1. `let irq = irq_lines.level_line(10)`; mark line 10 level-triggered in the PIC's ELCR
//!    (firmware does that for PCI lines on a PC; Linux leaves the ELCR alone);
//! 2. `let blk = Arc::new(Mutex::new(VirtioPci::new(Block::new(file, ro, "id"), irq)?))`;
//! 3. `pci_bus.add_function(blk.clone(), 10)?` places BAR0 and sets Interrupt Line;
//! 4. after an MMIO exit in the PCI window, `if blk.has_pending() { blk.process(&mem) }`,
//!    and at every synchronous exit drive the PIC inputs to `irq_lines.levels()`;
//! 5. for net, `deliver_frame(&mem, frame)` at the exit the log names.

mod block;
mod chain;
mod common_cfg;
mod disk;
mod net;
mod state;
mod transport;

#[cfg(test)]
mod testing;

use serde::de::DeserializeOwned;
use serde::Serialize;
use virtio_queue::Queue;
use vm_memory::GuestMemory;

pub use block::{Block, BlockBackend, BlockError, BlockState, BlockStats, MemBackend};
pub use net::{
    Delivery, FrameQueue, FrameSink, Net, NetState, NetStats, MAX_FRAME_LEN, NET_HDR_LEN, RX_QUEUE,
    TX_QUEUE,
};
pub use state::{VirtioPciState, VirtioQueueState};
pub use transport::VirtioPci;

/// PCI identity of virtio functions (virtio 1.2, 4.1.2): vendor 0x1af4, device 0x1040 + id
/// for a modern-only device, revision 1.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// A modern virtio function's PCI device ID is this plus its virtio device type.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// PCI revision ID of modern virtio functions.
pub const VIRTIO_PCI_REVISION: u8 = 1;
/// PCI subsystem ID of every virtio function (subsystem vendor [`VIRTIO_PCI_VENDOR`]).
pub const VIRTIO_PCI_SUBSYSTEM: u16 = 0x1100;
/// Read by the driver from msix_config and queue_msix_vector: no MSI-X on this machine.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// ISR status bits (virtio 1.2, 4.1.4.5).
pub const ISR_QUEUE: u8 = 1;
/// ISR status: the device configuration changed (or the device needs a reset).
pub const ISR_CONFIG: u8 = 2;
/// At most this many queues per device (one bit each in the pending-notification mask).
pub const MAX_QUEUES: usize = 64;

/// Why a device stopped: the guest driver broke the virtio contract. The device sets
/// DEVICE_NEEDS_RESET (and raises a configuration interrupt if the driver is running) and
/// ignores its queues until the driver resets it.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A queue's size or ring addresses are invalid or outside guest memory.
    #[error("queue {queue}: size or ring addresses are invalid or outside guest memory")]
    QueueInvalid {
        /// Index of the queue.
        queue: usize,
    },
    /// The available ring is unreadable or its index runs more than a queue ahead.
    #[error("queue {queue}: available ring unreadable or its index runs more than a queue ahead: {source}")]
    AvailRing {
        /// Index of the queue.
        queue: usize,
        /// virtio-queue's error.
        source: virtio_queue::Error,
    },
    /// The used ring could not be written.
    #[error("queue {queue}: cannot write the used ring: {source}")]
    UsedRing {
        /// Index of the queue.
        queue: usize,
        /// virtio-queue's error.
        source: virtio_queue::Error,
    },
    /// A chain head outside the descriptor table, or unreadable.
    #[error("queue {queue}: chain head {head} is out of the descriptor table or unreadable")]
    BadHead {
        /// Index of the queue.
        queue: usize,
        /// The head descriptor index the available ring gave.
        head: u16,
    },
    /// A chain that loops, leaves the descriptor table or is longer than the queue.
    #[error(
        "queue {queue}: chain from {head} loops, leaves the table or is longer than the queue"
    )]
    ChainBroken {
        /// Index of the queue.
        queue: usize,
        /// Descriptor index of the chain's head.
        head: u16,
    },
    /// A chain with a device-readable buffer after a device-writable one.
    #[error("queue {queue}: chain from {head} has a device-readable buffer after a writable one")]
    ReadableAfterWritable {
        /// Index of the queue.
        queue: usize,
        /// Descriptor index of the chain's head.
        head: u16,
    },
    /// A chain with a buffer outside guest memory.
    #[error(
        "queue {queue}: chain from {head} has a buffer {addr:#x}+{len:#x} outside guest memory"
    )]
    BufferOutsideMemory {
        /// Index of the queue.
        queue: usize,
        /// Descriptor index of the chain's head.
        head: u16,
        /// Guest-physical address of the buffer (or of the part accessed).
        addr: u64,
        /// Length of the buffer (or of the part accessed), in bytes.
        len: u32,
    },
    /// A chain without room for a part of the request.
    #[error("queue {queue}: chain from {head} has no room for the {what}")]
    ChainTooShort {
        /// Index of the queue.
        queue: usize,
        /// Descriptor index of the chain's head.
        head: u16,
        /// The part that does not fit, e.g. `"status byte"`.
        what: &'static str,
    },
    /// A device with no queues, more than [`MAX_QUEUES`], or a queue size that is not a power
    /// of two (the number of queues).
    #[error("a device with {0} queues does not fit the transport (1..={MAX_QUEUES}, sizes powers of two)")]
    BadQueueLayout(usize),
    /// Building the PCI configuration space failed.
    #[error("PCI configuration: {0}")]
    Pci(#[from] crate::pci::PciError),
}

/// What a virtio device type implements; the transport does the rest.
pub trait VirtioDevice: Send {
    /// Device-specific state saved beside the transport's.
    type State: Clone + Serialize + DeserializeOwned + std::fmt::Debug + PartialEq;

    /// `VIRTIO_ID_*`.
    fn device_type(&self) -> u32;
    /// PCI class code (0xCCSSPP), e.g. 0x010000 for storage, 0x020000 for a NIC.
    fn pci_class(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// A read of device-specific configuration at `offset`; past its end reads zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver reset the device (the transport resets the queues).
    fn reset(&mut self) {}
    /// Handles the available chains of queue `index` and returns how many it put on the
    /// used ring. A malformed chain or ring is an error; request-level failures (a read
    /// past the disk's end) are reported to the driver in the request's status instead.
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<usize, VirtioError>;
    /// Device-specific state to save beside the transport's.
    fn state(&self) -> Self::State;
    /// Loads a saved state, checking it against this device's configuration.
    fn restore(&mut self, state: &Self::State) -> Result<(), crate::StateError>;
}

/// Copies the bytes of `image` at `offset..` into `data`; bytes past its end read zero
/// (registers a device does not implement).
pub(crate) fn read_window(image: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
        *b = at.and_then(|at| image.get(at)).copied().unwrap_or(0);
    }
}
