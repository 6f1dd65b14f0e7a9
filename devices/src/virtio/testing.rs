//! The driver's side, for tests: guest memory, a split queue laid out by virtio-queue's
//! mock, and register accesses as the Linux virtio_pci modern driver makes them.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::{VirtioDevice, VirtioPci};
use crate::pci::PciFunction;
use crate::IrqLines;

pub const MEM_SIZE: usize = 4 << 20;
pub const QUEUE_ADDR: GuestAddress = GuestAddress(0x1_0000);
pub const QUEUE_LEN: u16 = 16;
/// Where tests put request headers, data and status bytes.
pub const DATA_ADDR: u64 = 0x10_0000;
pub const IRQ: u8 = 10;

pub const ACK: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
pub const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
pub const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub fn new_function<D: VirtioDevice>(device: D) -> (VirtioPci<D>, Arc<IrqLines>) {
    let lines = IrqLines::new();
    let f = VirtioPci::new(device, lines.level_line(IRQ).unwrap()).unwrap();
    (f, lines)
}

pub fn read(f: &mut dyn PciFunction, offset: u64, width: usize) -> u64 {
    let mut b = [0u8; 8];
    f.bar_read(0, offset, &mut b[..width]);
    u64::from_le_bytes(b)
}

pub fn write(f: &mut dyn PciFunction, offset: u64, width: usize, value: u64) {
    f.bar_write(0, offset, &value.to_le_bytes()[..width]);
}

pub fn status(f: &mut dyn PciFunction) -> u8 {
    read(f, 0x14, 1) as u8
}

pub fn set_status(f: &mut dyn PciFunction, s: u8) {
    write(f, 0x14, 1, u64::from(s));
}

pub fn device_features(f: &mut dyn PciFunction) -> u64 {
    write(f, 0x00, 4, 0);
    let low = read(f, 0x04, 4);
    write(f, 0x00, 4, 1);
    low | read(f, 0x04, 4) << 32
}

/// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status read back.
pub fn negotiate(f: &mut dyn PciFunction, features: u64) -> u8 {
    set_status(f, 0);
    set_status(f, ACK);
    set_status(f, ACK | DRIVER);
    write(f, 0x08, 4, 0);
    write(f, 0x0c, 4, features & 0xffff_ffff);
    write(f, 0x08, 4, 1);
    write(f, 0x0c, 4, features >> 32);
    set_status(f, ACK | DRIVER | FEATURES_OK);
    status(f)
}

/// Programs queue `index` with the mock's rings, 64-bit fields as two halves like Linux.
pub fn setup_queue<M: GuestMemory>(f: &mut dyn PciFunction, index: u16, q: &MockSplitQueue<M>) {
    write(f, 0x16, 2, u64::from(index));
    write(f, 0x18, 2, u64::from(QUEUE_LEN));
    for (offset, addr) in [
        (0x20, q.desc_table_addr()),
        (0x28, q.avail_addr()),
        (0x30, q.used_addr()),
    ] {
        write(f, offset, 4, addr.0 & 0xffff_ffff);
        write(f, offset + 4, 4, addr.0 >> 32);
    }
    write(f, 0x1c, 2, 1);
}

/// A running device with one queue set up from `q`.
pub fn start<M: GuestMemory>(f: &mut dyn PciFunction, features: u64, q: &MockSplitQueue<M>) {
    let s = negotiate(f, features);
    assert_ne!(s & FEATURES_OK, 0, "features {features:#x} refused");
    setup_queue(f, 0, q);
    set_status(f, s | DRIVER_OK);
}

pub fn notify(f: &mut dyn PciFunction, queue: u16) {
    write(f, 0x3000 + 4 * u64::from(queue), 2, u64::from(queue));
}

pub fn read_isr(f: &mut dyn PciFunction) -> u8 {
    read(f, 0x1000, 1) as u8
}

/// A descriptor the device reads (`next` chains to the following index when set).
pub fn readable(addr: u64, len: u32, next: Option<u16>) -> RawDescriptor {
    desc(addr, len, 0, next)
}

pub fn writable(addr: u64, len: u32, next: Option<u16>) -> RawDescriptor {
    desc(addr, len, VRING_DESC_F_WRITE as u16, next)
}

fn desc(addr: u64, len: u32, flags: u16, next: Option<u16>) -> RawDescriptor {
    let (flags, next) = match next {
        Some(n) => (flags | VRING_DESC_F_NEXT as u16, n),
        None => (flags, 0),
    };
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Stores `descs` at table index `at` onwards and makes chain head `head` available.
pub fn offer<M: GuestMemory>(q: &MockSplitQueue<M>, at: u16, descs: &[RawDescriptor], head: u16) {
    for (i, d) in descs.iter().enumerate() {
        q.desc_table().store(at + i as u16, *d).unwrap();
    }
    let idx = q.avail().idx().load();
    q.avail()
        .ring()
        .ref_at(usize::from(idx % QUEUE_LEN))
        .unwrap()
        .store(head);
    q.avail().idx().store(idx.wrapping_add(1));
}

/// The used ring's index and entry `i` (id, len).
pub fn used<M: GuestMemory>(q: &MockSplitQueue<M>, i: u16) -> (u16, u32, u32) {
    let e = q.used().ring().ref_at(usize::from(i)).unwrap().load();
    (q.used().idx().load(), e.id(), e.len())
}

pub fn put<M: GuestMemory>(mem: &M, addr: u64, bytes: &[u8]) {
    mem.write_slice(bytes, GuestAddress(addr)).unwrap();
}

pub fn get<M: GuestMemory>(mem: &M, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}
