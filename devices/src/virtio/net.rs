//! virtio-net (virtio 1.2, 5.1): queue 0 receives, queue 1 transmits.
//!
//! Transmitted frames go, without their `virtio_net_hdr_v1`, to an injected [`FrameSink`]
//! (the VMM holds them under the output rule and writes them to the TAP). Received frames
//! enter only through [`VirtioPci::deliver_frame`], which the VMM calls at a synchronous
//! exit and logs, so a replayer puts the same bytes into the same buffers at the same
//! point. No offloads, no mergeable buffers: one frame fills one receive chain.

use std::mem::size_of;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    virtio_net_hdr_v1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::chain::{for_each_chain, for_each_piece, next_chain, Chain};
use super::{read_window, VirtioDevice, VirtioError, VirtioPci, ISR_QUEUE};
use crate::StateError;

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// The header in front of every frame: 12 bytes once VIRTIO_F_VERSION_1 is agreed.
pub const NET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// Largest frame accepted from the guest (no segmentation offload is offered, so this
/// is the largest MTU Linux allows plus an Ethernet header, rounded up).
pub const MAX_FRAME_LEN: usize = 65_536;
/// Offset of `num_buffers` in the header, which a device sets to 1 (one chain per frame).
const NUM_BUFFERS_OFFSET: usize = 10;

/// Where transmitted frames go.
pub trait FrameSink: Send {
    /// Takes one transmitted Ethernet frame, without its virtio header.
    fn send(&mut self, frame: &[u8]);
}

/// Collects frames in memory (tests, or a VMM that forwards them later).
#[derive(Debug, Default, Clone)]
pub struct FrameQueue {
    /// Frames sent so far, oldest first.
    pub frames: Vec<Vec<u8>>,
}

impl FrameSink for FrameQueue {
    fn send(&mut self, frame: &[u8]) {
        self.frames.push(frame.to_vec());
    }
}

/// Frame counters of a [`Net`] device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest transmitted, passed to the sink.
    pub tx_frames: u64,
    /// Bytes of those frames, without the virtio header.
    pub tx_bytes: u64,
    /// Transmit chains shorter than the header or longer than [`MAX_FRAME_LEN`].
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames, without the virtio header.
    pub rx_bytes: u64,
    /// Frames that did not fit the receive chain offered for them.
    pub rx_too_large: u64,
}

/// Saved state of a [`Net`] device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetState {
    /// The MAC address, checked against the device's on restore.
    pub mac: [u8; 6],
    /// Frame counters.
    pub stats: NetStats,
}

/// What became of a frame offered to [`VirtioPci::deliver_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written into the chain at `head`, `len` bytes with the header, and signalled.
    Delivered {
        /// Descriptor index of the chain's head.
        head: u16,
        /// Bytes written into the chain, header included.
        len: u32,
    },
    /// The driver has no receive buffer ready (or is not running): nothing was written;
    /// the VMM may offer the frame again at a later exit or drop it.
    NoBuffer,
    /// The next receive chain is too small: the chain went back to the driver empty (it
    /// counts a length error and reposts it) and the frame is dropped.
    TooLarge {
        /// Descriptor index of the chain's head.
        head: u16,
    },
}

/// A virtio-net device whose transmitted frames go to sink `S`.
pub struct Net<S> {
    mac: [u8; 6],
    sink: S,
    stats: NetStats,
    scratch: Vec<u8>,
}

impl<S: FrameSink> Net<S> {
    /// A NIC with MAC address `mac`, sending transmitted frames to `sink`.
    pub fn new(mac: [u8; 6], sink: S) -> Self {
        Self {
            mac,
            sink,
            stats: NetStats::default(),
            scratch: vec![0; MAX_FRAME_LEN],
        }
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The frame sink, e.g. to take the frames a [`FrameQueue`] collected.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Frame counters so far.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Sends the frame of one transmit chain (nothing is written back into it).
    fn transmit<M: GuestMemory>(&mut self, mem: &M, chain: &Chain) -> Result<u32, VirtioError> {
        let len = chain.readable_len().saturating_sub(NET_HDR_LEN as u64);
        if chain.readable_len() < NET_HDR_LEN as u64 || len > MAX_FRAME_LEN as u64 {
            self.stats.tx_dropped += 1;
            return Ok(0);
        }
        let mut filled = 0;
        let scratch = &mut self.scratch;
        for_each_piece(&chain.readable, NET_HDR_LEN as u64, len, |addr, n| {
            mem.read_slice(&mut scratch[filled..filled + n], addr)
                .map_err(|_| VirtioError::BufferOutsideMemory {
                    queue: TX_QUEUE,
                    head: chain.head,
                    addr: addr.0,
                    len: n as u32,
                })?;
            filled += n;
            Ok::<_, VirtioError>(())
        })?;
        self.sink.send(&scratch[..filled]);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += filled as u64;
        Ok(0)
    }
}

impl<S: FrameSink> VirtioDevice for Net<S> {
    type State = NetState;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn pci_class(&self) -> u32 {
        0x02_00_00 // network, Ethernet
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    }

    /// `struct virtio_net_config`: `mac[6]`, then status (le16, link up); the rest is not
    /// offered and reads zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        read_window(&config, offset, data);
    }

    /// A notify on the receive queue only says buffers were added; frames arrive through
    /// `deliver_frame`.
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<usize, VirtioError> {
        match index {
            TX_QUEUE => for_each_chain(queue, TX_QUEUE, mem, |c| self.transmit(mem, c)),
            _ => Ok(0),
        }
    }

    fn state(&self) -> NetState {
        NetState {
            mac: self.mac,
            stats: self.stats.clone(),
        }
    }

    fn restore(&mut self, state: &NetState) -> Result<(), StateError> {
        if state.mac != self.mac {
            return Err(StateError::new(
                "virtio-net",
                format!(
                    "saved with MAC {:02x?}, configured {:02x?}",
                    state.mac, self.mac
                ),
            ));
        }
        self.stats = state.stats.clone();
        Ok(())
    }
}

impl<S: FrameSink> VirtioPci<Net<S>> {
    /// Writes `frame` (an Ethernet frame, no virtio header) into the next receive chain
    /// and raises the interrupt. Call only with the vCPU stopped at a synchronous exit,
    /// and log the result: it is an input to the guest.
    pub fn deliver_frame<M: GuestMemory>(
        &mut self,
        mem: &M,
        frame: &[u8],
    ) -> Result<Delivery, VirtioError> {
        if !self.running() || !self.queues[RX_QUEUE].ready() {
            return Ok(Delivery::NoBuffer);
        }
        let result = deliver(&mut self.queues[RX_QUEUE], mem, frame);
        match result {
            Ok(Delivery::Delivered { len, .. }) => {
                self.device.stats.rx_frames += 1;
                self.device.stats.rx_bytes += u64::from(len) - NET_HDR_LEN as u64;
                self.signal(ISR_QUEUE);
            }
            Ok(Delivery::TooLarge { .. }) => {
                self.device.stats.rx_too_large += 1;
                self.signal(ISR_QUEUE);
            }
            Ok(Delivery::NoBuffer) => {}
            Err(_) => self.fail(),
        }
        result
    }
}

fn deliver<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    frame: &[u8],
) -> Result<Delivery, VirtioError> {
    if !queue.is_valid(mem) {
        return Err(VirtioError::QueueInvalid { queue: RX_QUEUE });
    }
    let Some(chain) = next_chain(queue, RX_QUEUE, mem)? else {
        return Ok(Delivery::NoBuffer);
    };
    let head = chain.head;
    let used_ring = |source| VirtioError::UsedRing {
        queue: RX_QUEUE,
        source,
    };
    let total = NET_HDR_LEN + frame.len();
    if chain.writable_len() < total as u64 {
        queue.add_used(mem, head, 0).map_err(used_ring)?;
        return Ok(Delivery::TooLarge { head });
    }
    let mut header = [0u8; NET_HDR_LEN];
    header[NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
    let mut written = 0;
    for_each_piece(&chain.writable, 0, total as u64, |addr, n| {
        let (hdr_part, frame_part) = split_piece(written, n, &header, frame);
        let mut at = addr;
        for part in [hdr_part, frame_part] {
            mem.write_slice(part, at)
                .map_err(|_| VirtioError::BufferOutsideMemory {
                    queue: RX_QUEUE,
                    head,
                    addr: at.0,
                    len: part.len() as u32,
                })?;
            at = GuestAddress(at.0 + part.len() as u64);
        }
        written += n;
        Ok::<_, VirtioError>(())
    })?;
    queue.add_used(mem, head, total as u32).map_err(used_ring)?;
    Ok(Delivery::Delivered {
        head,
        len: total as u32,
    })
}

/// The bytes `from..from + n` of the header followed by the frame, as a header part and a
/// frame part (either may be empty).
fn split_piece<'a>(
    from: usize,
    n: usize,
    header: &'a [u8],
    frame: &'a [u8],
) -> (&'a [u8], &'a [u8]) {
    let end = from + n;
    let h = &header[from.min(header.len())..end.min(header.len())];
    let f = &frame[from.saturating_sub(header.len())..end.saturating_sub(header.len())];
    (h, f)
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
