use virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::mock::MockSplitQueue;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::testing::*;
use crate::virtio::{VirtioPci, ISR_QUEUE};

pub(super) const HDR: u64 = DATA_ADDR;
pub(super) const STATUS: u64 = DATA_ADDR + 0x100;
pub(super) const DATA: u64 = DATA_ADDR + 0x1000;
pub(super) const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH;
pub(super) const DISK: usize = 64 * 1024;

pub(super) type Dev = VirtioPci<Block<MemBackend>>;

pub(super) fn disk(read_only: bool) -> Block<MemBackend> {
    let mut backend = MemBackend::new(DISK);
    for (i, b) in backend.data.iter_mut().enumerate() {
        *b = (i / 512) as u8;
    }
    Block::new(backend, read_only, "ftvm-disk-0")
}

/// Header, `len` data bytes (device-writable for IN/GET_ID), status: three descriptors.
pub(super) fn request(
    mem: &vm_memory::GuestMemoryMmap,
    q: &MockSplitQueue<vm_memory::GuestMemoryMmap>,
    kind: u32,
    sector: u64,
    len: u32,
) {
    header(mem, kind, sector);
    let data = if kind == VIRTIO_BLK_T_OUT {
        readable(DATA, len, Some(2))
    } else {
        writable(DATA, len, Some(2))
    };
    offer(
        q,
        0,
        &[readable(HDR, 16, Some(1)), data, writable(STATUS, 1, None)],
        0,
    );
}

pub(super) fn header(mem: &vm_memory::GuestMemoryMmap, kind: u32, sector: u64) {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    put(mem, HDR, &header);
    put(mem, STATUS, &[0xee]);
}

pub(super) fn status_byte(mem: &vm_memory::GuestMemoryMmap) -> u32 {
    u32::from(get(mem, STATUS, 1)[0])
}

pub(super) fn running(
    read_only: bool,
) -> (
    Dev,
    std::sync::Arc<crate::IrqLines>,
    vm_memory::GuestMemoryMmap,
) {
    let (mut f, lines) = new_function(disk(read_only));
    let mem = memory();
    let q = MockSplitQueue::create(&mem, QUEUE_ADDR, QUEUE_LEN);
    start(&mut f, FEATURES, &q);
    (f, lines, mem)
}

pub(super) fn queue(
    mem: &vm_memory::GuestMemoryMmap,
) -> MockSplitQueue<'_, vm_memory::GuestMemoryMmap> {
    // The mock only computes addresses: a second one over the same memory sees the rings
    // the first one wrote (it starts with avail idx read from memory in `offer`).
    MockSplitQueue::create(mem, QUEUE_ADDR, QUEUE_LEN)
}

#[test]
fn write_then_read_round_trip() {
    let (mut f, lines, mem) = running(false);
    let q = queue(&mem);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    put(&mem, DATA, &pattern);
    request(&mem, &q, VIRTIO_BLK_T_OUT, 3, 1024);
    notify(&mut f, 0);
    assert!(f.has_pending());
    assert_eq!(f.process(&mem).unwrap(), 1);
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(
        used(&q, 0),
        (1, 0, 1),
        "used: head 0, only the status byte written"
    );
    assert_eq!(&f.device().backend().data[3 * 512..5 * 512], &pattern[..]);
    assert_eq!(
        lines.levels(),
        1 << IRQ,
        "INTx asserted while the ISR is set"
    );

    put(&mem, DATA, &[0; 1024]);
    request(&mem, &q, VIRTIO_BLK_T_IN, 3, 1024);
    notify(&mut f, 0);
    assert_eq!(f.process(&mem).unwrap(), 1);
    assert_eq!(get(&mem, DATA, 1024), pattern);
    assert_eq!(used(&q, 1), (2, 0, 1025));
    assert_eq!(read_isr(&mut f), ISR_QUEUE);
    assert_eq!(lines.levels(), 0, "the ISR read lowers the line");
    assert_eq!(read_isr(&mut f), 0);
    let s = f.device().stats();
    assert_eq!((s.reads, s.writes, s.bytes_read, s.failed), (1, 1, 1024, 0));
}

#[test]
fn large_reads_go_through_the_bounded_scratch_buffer() {
    let (mut f, _lines, mem) = running(false);
    let q = queue(&mem);
    request(&mem, &q, VIRTIO_BLK_T_IN, 0, DISK as u32);
    notify(&mut f, 0);
    f.process(&mem).unwrap();
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(get(&mem, DATA, DISK), f.device().backend().data);
}

#[test]
fn read_only_disk_refuses_writes() {
    let (mut f, _lines, mem) = running(true);
    assert_ne!(device_features(&mut f) & 1 << VIRTIO_BLK_F_RO, 0);
    let q = queue(&mem);
    put(&mem, DATA, &[0xaa; 512]);
    request(&mem, &q, VIRTIO_BLK_T_OUT, 0, 512);
    notify(&mut f, 0);
    assert_eq!(
        f.process(&mem).unwrap(),
        1,
        "completed, with an error status"
    );
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(f.device().backend().data[0], 0);
    assert!(matches!(
        f.device_mut().take_last_error(),
        Some(BlockError::ReadOnly)
    ));
    assert_eq!(f.device().stats().failed, 1);
}

#[test]
fn request_level_errors_are_statuses() {
    let (mut f, _lines, mem) = running(false);
    let q = queue(&mem);
    let sectors = (DISK / 512) as u64;
    for (kind, sector, len, want) in [
        (VIRTIO_BLK_T_IN, sectors - 1, 1024, VIRTIO_BLK_S_IOERR), // past the end
        (VIRTIO_BLK_T_IN, u64::MAX / 256, 512, VIRTIO_BLK_S_IOERR), // offset overflows
        (VIRTIO_BLK_T_OUT, 0, 100, VIRTIO_BLK_S_IOERR),           // not whole sectors
        (77, 0, 512, VIRTIO_BLK_S_UNSUPP),
        (VIRTIO_BLK_T_IN, sectors - 1, 512, VIRTIO_BLK_S_OK),
    ] {
        request(&mem, &q, kind, sector, len);
        notify(&mut f, 0);
        assert_eq!(f.process(&mem).unwrap(), 1);
        assert_eq!(
            status_byte(&mem),
            want,
            "type {kind} sector {sector} len {len}"
        );
    }
    assert_eq!(
        f.device_status() & 0x40,
        0,
        "no reset needed for request errors"
    );
}

#[test]
fn flush_and_get_id() {
    let (mut f, _lines, mem) = running(false);
    let q = queue(&mem);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    // A flush has no data: header and status only.
    offer(
        &q,
        0,
        &[readable(HDR, 16, Some(1)), writable(STATUS, 1, None)],
        0,
    );
    notify(&mut f, 0);
    assert_eq!(f.process(&mem).unwrap(), 1);
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(f.device().backend().flushes, 1);
    request(&mem, &q, VIRTIO_BLK_T_GET_ID, 0, 20);
    notify(&mut f, 0);
    f.process(&mem).unwrap();
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(&get(&mem, DATA, 20)[..12], b"ftvm-disk-0\0");
}

#[test]
fn device_config_shows_capacity_and_seg_max() {
    let (mut f, _lines, _mem) = running(false);
    assert_eq!(read(&mut f, 0x2000, 8), (DISK / 512) as u64);
    assert_eq!(read(&mut f, 0x2000 + 12, 4), u64::from(SEG_MAX));
    assert_eq!(read(&mut f, 0x2000 + 0x800, 4), 0);
}

#[test]
fn state_round_trip_keeps_queue_positions_and_the_line() {
    let (mut f, lines, mem) = running(false);
    let q = queue(&mem);
    request(&mem, &q, VIRTIO_BLK_T_IN, 1, 512);
    notify(&mut f, 0);
    f.process(&mem).unwrap();
    let state = f.state();
    let json = serde_json::to_string(&state).unwrap();
    let state: crate::virtio::VirtioPciState<BlockState> = serde_json::from_str(&json).unwrap();
    let backend = f.device().backend().clone();
    drop(f);
    assert_eq!(lines.levels(), 1 << IRQ, "dropping does not lower a level");
    let lines2 = crate::IrqLines::new();
    let irq = lines2.level_line(IRQ).unwrap();
    let mut g = Dev::from_state(Block::new(backend.clone(), false, "x"), irq, &state).unwrap();
    assert_eq!(
        lines2.levels(),
        1 << IRQ,
        "pending ISR asserts the restored line"
    );
    assert_eq!(g.state(), state);
    request(&mem, &q, VIRTIO_BLK_T_IN, 2, 512);
    notify(&mut g, 0);
    assert_eq!(
        g.process(&mem).unwrap(),
        1,
        "continues at the saved ring position"
    );
    assert_eq!(used(&q, 1).0, 2);

    let new = |s: &crate::virtio::VirtioPciState<BlockState>, b: MemBackend| {
        Dev::from_state(
            Block::new(b, false, "x"),
            crate::IrqLines::new().level_line(IRQ).unwrap(),
            s,
        )
    };
    let mut bad = state.clone();
    bad.isr = 0x80;
    assert!(new(&bad, backend.clone()).is_err());
    let mut bad = state.clone();
    bad.queues.push(bad.queues[0]);
    assert!(new(&bad, backend.clone()).is_err());
    let mut bad = state.clone();
    bad.queues[0].size = 3;
    assert!(new(&bad, backend.clone()).is_err());
    let mut bad = state.clone();
    bad.status |= 0x10;
    assert!(new(&bad, backend.clone()).is_err());
    let mut bad = state.clone();
    bad.driver_features = 0;
    assert!(
        new(&bad, backend.clone()).is_err(),
        "FEATURES_OK without VERSION_1"
    );
    let mut bad = state.clone();
    bad.pending = 2;
    assert!(new(&bad, backend.clone()).is_err());
    let mut bad = state.clone();
    bad.config.bytes[2] = 0x41; // device id: another device type
    assert!(new(&bad, backend.clone()).is_err());
    assert!(
        new(&state, MemBackend::new(DISK * 2)).is_err(),
        "another disk size"
    );
}

#[test]
fn guest_writes_show_in_a_dirty_bitmap() {
    // The VMM can learn which pages a device wrote (KVM's dirty log does not see them) by
    // passing a memory with a bitmap; nothing in the device has to report them.
    use std::ops::Deref;
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (mut f, _lines) = new_function(disk(false));
    let q = MockSplitQueue::create(&mem, QUEUE_ADDR, QUEUE_LEN);
    start(&mut f, FEATURES, &q);
    let mut header = [0u8; 16];
    header[8..].copy_from_slice(&2u64.to_le_bytes()); // IN, sector 2
    put(&mem, HDR, &header);
    let descs = [
        readable(HDR, 16, Some(1)),
        writable(DATA, 8192, Some(2)),
        writable(STATUS, 1, None),
    ];
    offer(&q, 0, &descs, 0);
    let region = mem.iter().next().unwrap();
    region.deref().bitmap().reset();
    notify(&mut f, 0);
    assert_eq!(f.process(&mem).unwrap(), 1);
    let dirty = |addr: u64| region.bitmap().dirty_at(addr as usize);
    assert!(dirty(DATA) && dirty(DATA + 4096), "data pages");
    assert!(dirty(STATUS), "status byte");
    assert!(dirty(q.used_addr().0), "used ring");
    assert!(
        !dirty(DATA + 8192) && !dirty(0x20_0000),
        "pages it did not write"
    );
}

/// Found by the virtio_queues fuzz target: a driver may write features the device does
/// not offer (it is then refused FEATURES_OK), and a state saved at that moment (a
/// checkpoint or a state transfer mid-negotiation) was refused on restore, so a guest
/// could keep a backup from joining. Only a state with FEATURES_OK needs the subset.
#[test]
fn unoffered_driver_features_before_features_ok_restore() {
    let (mut f, _lines) = new_function(disk(false));
    let status = negotiate(&mut f, FEATURES | 1 << 50);
    assert_eq!(status & FEATURES_OK, 0, "unoffered feature refused");
    let state = f.state();
    let irq = || crate::IrqLines::new().level_line(IRQ).unwrap();
    let g = Dev::from_state(disk(false), irq(), &state).unwrap();
    assert_eq!(g.state(), state);
    let mut bad = state.clone();
    bad.status |= FEATURES_OK;
    assert!(Dev::from_state(disk(false), irq(), &bad).is_err());
}

/// Found by the virtio_queues fuzz target: a status write with a bit virtio does not
/// define (0x20) was kept, and restoring refuses such a status, so one guest write made
/// every later checkpoint or state transfer of the machine fail.
#[test]
fn undefined_status_bits_are_not_kept() {
    let (mut f, _lines) = new_function(disk(false));
    set_status(&mut f, ACK | 0x20);
    assert_eq!(status(&mut f), ACK);
    let state = f.state();
    let irq = crate::IrqLines::new().level_line(IRQ).unwrap();
    assert_eq!(
        Dev::from_state(disk(false), irq, &state).unwrap().state(),
        state
    );
}
