use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::testing::*;
use crate::virtio::ISR_CONFIG;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC;
const RX_ADDR: GuestAddress = GuestAddress(0x2_0000);
const TX_ADDR: GuestAddress = GuestAddress(0x3_0000);

type Dev = VirtioPci<Net<FrameQueue>>;

fn running(mem: &GuestMemoryMmap) -> (Dev, std::sync::Arc<crate::IrqLines>) {
    let (mut f, lines) = new_function(Net::new(MAC, FrameQueue::default()));
    let s = negotiate(&mut f, FEATURES);
    assert_ne!(s & FEATURES_OK, 0);
    setup_queue(
        &mut f,
        RX_QUEUE as u16,
        &MockSplitQueue::create(mem, RX_ADDR, QUEUE_LEN),
    );
    setup_queue(
        &mut f,
        TX_QUEUE as u16,
        &MockSplitQueue::create(mem, TX_ADDR, QUEUE_LEN),
    );
    set_status(&mut f, s | DRIVER_OK);
    (f, lines)
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 1) as u8).collect()
}

#[test]
fn config_has_the_mac_and_link_up() {
    let (mut f, _lines) = new_function(Net::new(MAC, FrameQueue::default()));
    let mut id = [0u8; 4];
    crate::pci::PciFunction::config_read(&mut f, 0, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x1041_1af4, "virtio-net, modern id");
    let mac: Vec<u8> = (0..6).map(|i| read(&mut f, 0x2000 + i, 1) as u8).collect();
    assert_eq!(mac, MAC);
    assert_eq!(read(&mut f, 0x2006, 2), u64::from(VIRTIO_NET_S_LINK_UP));
    assert_ne!(device_features(&mut f) & 1 << VIRTIO_NET_F_MAC, 0);
    assert_eq!(read(&mut f, 0x12, 2), 2, "two queues");
}

#[test]
fn transmit_strips_the_header() {
    let mem = memory();
    let (mut f, lines) = running(&mem);
    let tx = MockSplitQueue::create(&mem, TX_ADDR, QUEUE_LEN);
    let data = frame(100);
    put(&mem, DATA_ADDR, &[0; NET_HDR_LEN]);
    put(&mem, DATA_ADDR + 0x100, &data[..40]);
    put(&mem, DATA_ADDR + 0x200, &data[40..]);
    // Header alone, then the frame in two pieces, as Linux may send it.
    let descs = [
        readable(DATA_ADDR, NET_HDR_LEN as u32, Some(1)),
        readable(DATA_ADDR + 0x100, 40, Some(2)),
        readable(DATA_ADDR + 0x200, 60, None),
    ];
    offer(&tx, 0, &descs, 0);
    // A chain shorter than the header is dropped, and still returned.
    offer(&tx, 3, &[readable(DATA_ADDR, 4, None)], 3);
    notify(&mut f, TX_QUEUE as u16);
    assert_eq!(f.process(&mem).unwrap(), 2);
    assert_eq!(f.device_mut().sink_mut().frames, vec![data]);
    assert_eq!(used(&tx, 1), (2, 3, 0));
    let s = f.device().stats();
    assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (1, 100, 1));
    assert_eq!(lines.levels(), 1 << IRQ);
}

#[test]
fn deliver_frame_fills_the_next_receive_chain() {
    let mem = memory();
    let (mut f, lines) = running(&mem);
    let rx = MockSplitQueue::create(&mem, RX_ADDR, QUEUE_LEN);
    assert_eq!(
        f.deliver_frame(&mem, &frame(60)).unwrap(),
        Delivery::NoBuffer
    );
    assert_eq!(lines.levels(), 0);
    // Two descriptors splitting inside the header: 8 bytes, then 1526.
    offer(
        &rx,
        0,
        &[
            writable(DATA_ADDR, 8, Some(1)),
            writable(DATA_ADDR + 8, 1526, None),
        ],
        0,
    );
    let data = frame(1514);
    let got = f.deliver_frame(&mem, &data).unwrap();
    assert_eq!(got, Delivery::Delivered { head: 0, len: 1526 });
    let mut header = [0u8; NET_HDR_LEN];
    header[10] = 1;
    assert_eq!(get(&mem, DATA_ADDR, NET_HDR_LEN), header);
    assert_eq!(get(&mem, DATA_ADDR + NET_HDR_LEN as u64, 1514), data);
    assert_eq!(used(&rx, 0), (1, 0, 1526));
    assert_eq!(lines.levels(), 1 << IRQ);
    assert_eq!(f.device().stats().rx_bytes, 1514);
}

#[test]
fn an_offer_without_a_buffer_changes_nothing() {
    // The VMM logs only offers the device acted on: one it had no buffer for must leave
    // the function's state, and guest memory, as they were (a replayer never makes it).
    let mem = memory();
    let (mut f, lines) = running(&mem);
    let rx = MockSplitQueue::create(&mem, RX_ADDR, QUEUE_LEN);
    let before = f.state();
    assert_eq!(
        f.deliver_frame(&mem, &frame(60)).unwrap(),
        Delivery::NoBuffer
    );
    assert_eq!(f.state(), before);
    offer(&rx, 0, &[writable(DATA_ADDR, 2048, None)], 0);
    assert!(matches!(
        f.deliver_frame(&mem, &frame(60)).unwrap(),
        Delivery::Delivered { head: 0, .. }
    ));
    // The one buffer is used: the next offer finds none, and again changes nothing.
    let before = f.state();
    let ring = get(&mem, RX_ADDR.0, 0x1000);
    assert_eq!(
        f.deliver_frame(&mem, &frame(60)).unwrap(),
        Delivery::NoBuffer
    );
    assert_eq!(f.state(), before);
    assert_eq!(get(&mem, RX_ADDR.0, 0x1000), ring);
    assert_eq!(
        lines.levels(),
        1 << IRQ,
        "only the delivered frame's interrupt"
    );
}

#[test]
fn frame_larger_than_the_buffer_is_dropped() {
    let mem = memory();
    let (mut f, _lines) = running(&mem);
    let rx = MockSplitQueue::create(&mem, RX_ADDR, QUEUE_LEN);
    offer(&rx, 0, &[writable(DATA_ADDR, 100, None)], 0);
    put(&mem, DATA_ADDR, &[0xee; 100]);
    let got = f.deliver_frame(&mem, &frame(200)).unwrap();
    assert_eq!(got, Delivery::TooLarge { head: 0 });
    assert_eq!(used(&rx, 0), (1, 0, 0), "returned empty");
    assert_eq!(
        get(&mem, DATA_ADDR, 100),
        vec![0xee; 100],
        "nothing written"
    );
    assert_eq!(f.device().stats().rx_too_large, 1);
    assert_eq!(f.device_status() & 0x40, 0);
}

#[test]
fn garbage_receive_chain_needs_a_reset() {
    let mem = memory();
    let (mut f, lines) = running(&mem);
    let rx = MockSplitQueue::create(&mem, RX_ADDR, QUEUE_LEN);
    offer(&rx, 0, &[writable(0x4000_0000, 2048, None)], 0);
    let err = f.deliver_frame(&mem, &frame(60)).unwrap_err();
    assert!(
        matches!(err, VirtioError::BufferOutsideMemory { .. }),
        "{err}"
    );
    assert_ne!(f.device_status() & 0x40, 0);
    assert_eq!(read_isr(&mut f), ISR_CONFIG);
    assert_eq!(lines.levels(), 0);
    assert_eq!(
        f.deliver_frame(&mem, &frame(60)).unwrap(),
        Delivery::NoBuffer
    );
}

#[test]
fn state_round_trip_checks_the_mac() {
    let mem = memory();
    let (f, _lines) = running(&mem);
    let state = f.state();
    let irq = || crate::IrqLines::new().level_line(IRQ).unwrap();
    let g = Dev::from_state(Net::new(MAC, FrameQueue::default()), irq(), &state).unwrap();
    assert_eq!(g.state(), state);
    let other = Net::new([2, 0, 0, 0, 0, 1], FrameQueue::default());
    assert!(Dev::from_state(other, irq(), &state).is_err());
}

#[test]
fn random_rings_never_panic() {
    let mut rng = crate::testing::XorShift::new(0x2545_f491_4f6c_dd1d);
    for _ in 0..200 {
        let mem = memory();
        let (mut f, _lines) = running(&mem);
        for addr in [RX_ADDR.0, TX_ADDR.0] {
            let junk: Vec<u8> = (0..0x1000).map(|_| rng.next_u64() as u8).collect();
            put(&mem, addr, &junk);
        }
        notify(&mut f, TX_QUEUE as u16);
        let _ = f.process(&mem);
        let _ = f.deliver_frame(&mem, &frame((rng.next_u64() % 2000) as usize));
    }
}
