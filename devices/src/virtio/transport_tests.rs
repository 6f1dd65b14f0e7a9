use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
use virtio_queue::mock::MockSplitQueue;

use super::*;
use crate::pci::{PciBus, PciMmio, CONFIG_ADDRESS_PORT, DEFAULT_MMIO_WINDOW_START};
use crate::virtio::testing::*;
use crate::virtio::{Block, MemBackend};
use crate::BusDevice;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

fn blk() -> Block<MemBackend> {
    Block::new(MemBackend::new(8192), false, "t")
}

fn cfg_read(bus: &mut PciBus, device: u32, reg: u32, width: usize) -> u32 {
    let addr = 0x8000_0000u32 | device << 11 | (reg & 0xfc);
    bus.write(CONFIG_ADDRESS_PORT, 0, &addr.to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(CONFIG_ADDRESS_PORT, 4 + u64::from(reg & 3), &mut b[..width]);
    u32::from_le_bytes(b)
}

fn cfg_write(bus: &mut PciBus, device: u32, reg: u32, value: u32) {
    let addr = 0x8000_0000u32 | device << 11 | reg;
    bus.write(CONFIG_ADDRESS_PORT, 0, &addr.to_le_bytes());
    bus.write(CONFIG_ADDRESS_PORT, 4, &value.to_le_bytes());
}

#[test]
fn linux_probe_sees_a_modern_virtio_function() {
    let (f, lines) = new_function(blk());
    let f = Arc::new(Mutex::new(f));
    let mut bus = PciBus::new(DEFAULT_MMIO_WINDOW_START, 0x10_0000).unwrap();
    assert_eq!(bus.add_function(f.clone(), IRQ).unwrap(), 1);
    assert_eq!(cfg_read(&mut bus, 0, 0x0a, 2), 0x0600, "host bridge");
    assert_eq!(
        cfg_read(&mut bus, 1, 0x00, 4),
        0x1042_1af4,
        "virtio-blk, modern id"
    );
    assert_eq!(cfg_read(&mut bus, 1, 0x08, 1), 1, "revision 1");
    assert_eq!(cfg_read(&mut bus, 1, 0x2c, 4), 0x1100_1af4, "subsystem");
    assert_eq!(
        cfg_read(&mut bus, 1, 0x3c, 2),
        0x0100 | u32::from(IRQ),
        "INTA, line"
    );
    // BAR0 sizing, as pci_read_bases does it (decoding off around the probe).
    cfg_write(&mut bus, 1, 0x04, 0);
    let bar = cfg_read(&mut bus, 1, 0x10, 4);
    cfg_write(&mut bus, 1, 0x10, 0xffff_ffff);
    assert_eq!(
        cfg_read(&mut bus, 1, 0x10, 4),
        !(BAR0_SIZE as u32 - 1),
        "16 KiB, mem32"
    );
    cfg_write(&mut bus, 1, 0x10, bar);
    cfg_write(&mut bus, 1, 0x04, 0x2);
    // The capability walk of virtio_pci_find_capability.
    assert_ne!(cfg_read(&mut bus, 1, 0x06, 2) & 0x10, 0, "capability list");
    let mut found = vec![];
    let mut pos = cfg_read(&mut bus, 1, 0x34, 1);
    while pos != 0 && found.len() < 48 {
        assert_eq!(cfg_read(&mut bus, 1, pos, 1), 0x09, "vendor capability");
        let cfg_type = cfg_read(&mut bus, 1, pos + 3, 1);
        let bar_no = cfg_read(&mut bus, 1, pos + 4, 1);
        let offset = cfg_read(&mut bus, 1, pos + 8, 4);
        let length = cfg_read(&mut bus, 1, pos + 12, 4);
        assert_eq!(bar_no, 0);
        assert!(u64::from(offset) + u64::from(length) <= BAR0_SIZE);
        if cfg_type == 2 {
            assert_eq!(cfg_read(&mut bus, 1, pos + 16, 4), NOTIFY_MULTIPLIER);
        }
        found.push((cfg_type, offset));
        pos = cfg_read(&mut bus, 1, pos + 1, 1);
    }
    found.sort();
    assert_eq!(
        found,
        [(1, 0), (2, 0x3000), (3, 0x1000), (4, 0x2000), (5, 0)]
    );
    // Common configuration through the MMIO window: one queue of 128.
    let mut mmio = PciMmio::new(Arc::new(Mutex::new(bus)));
    let base = u64::from(bar);
    let mut b = [0u8; 2];
    mmio.read(base, 0x12, &mut b);
    assert_eq!(u16::from_le_bytes(b), 1);
    mmio.read(base, 0x18, &mut b);
    assert_eq!(u16::from_le_bytes(b), 128);
    assert_eq!(lines.levels(), 0);
}

#[test]
fn feature_negotiation() {
    let (mut f, _lines) = new_function(blk());
    let offered = device_features(&mut f);
    assert_ne!(offered & VERSION_1, 0);
    assert_ne!(offered & 1 << VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(
        negotiate(&mut f, 0) & FEATURES_OK,
        0,
        "legacy driver refused"
    );
    assert_eq!(
        negotiate(&mut f, VERSION_1 | 1 << 60) & FEATURES_OK,
        0,
        "not offered"
    );
    let s = negotiate(&mut f, VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH);
    assert_eq!(s, ACK | DRIVER | FEATURES_OK);
    // Feature writes after FEATURES_OK do not change the agreement.
    write(&mut f, 0x08, 4, 0);
    write(&mut f, 0x0c, 4, 0);
    write(&mut f, 0x08, 4, 1);
    assert_eq!(read(&mut f, 0x0c, 4), 1, "VERSION_1 still there");
    // Writing 0 resets everything.
    set_status(&mut f, 0);
    assert_eq!(status(&mut f), 0);
    write(&mut f, 0x08, 4, 1);
    assert_eq!(read(&mut f, 0x0c, 4), 0);
}

#[test]
fn no_msix_and_queue_registers() {
    let (mut f, _lines) = new_function(blk());
    negotiate(&mut f, VERSION_1);
    assert_eq!(read(&mut f, 0x10, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    write(&mut f, 0x1a, 2, 0);
    assert_eq!(read(&mut f, 0x1a, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    write(&mut f, 0x18, 2, 100);
    assert_eq!(read(&mut f, 0x18, 2), 128, "not a power of two: kept");
    write(&mut f, 0x18, 2, 256);
    assert_eq!(read(&mut f, 0x18, 2), 128, "above the maximum: kept");
    write(&mut f, 0x18, 2, 32);
    assert_eq!(read(&mut f, 0x18, 2), 32);
    write(&mut f, 0x20, 4, 0x1003);
    assert_eq!(
        read(&mut f, 0x20, 8),
        0,
        "misaligned descriptor table: kept"
    );
    write(&mut f, 0x20, 8, 0x1_2345_6000);
    assert_eq!(read(&mut f, 0x20, 8), 0x1_2345_6000);
    assert_eq!(read(&mut f, 0x1e, 2), 0, "notify offset of queue 0");
    write(&mut f, 0x16, 2, 7);
    assert_eq!(read(&mut f, 0x18, 2), 0, "queue 7 does not exist");
    write(&mut f, 0x18, 2, 16);
    write(&mut f, 0x1c, 2, 1);
    assert_eq!(read(&mut f, 0x1c, 2), 0);
}

#[test]
fn queue_registers_are_frozen_once_running() {
    let (mut f, _lines) = new_function(blk());
    let mem = memory();
    let q = MockSplitQueue::create(&mem, QUEUE_ADDR, QUEUE_LEN);
    start(&mut f, VERSION_1, &q);
    write(&mut f, 0x18, 2, 64);
    write(&mut f, 0x20, 8, 0x8000);
    assert_eq!(read(&mut f, 0x18, 2), u64::from(QUEUE_LEN));
    assert_eq!(read(&mut f, 0x20, 8), QUEUE_ADDR.0);
}

#[test]
fn notifications_wait_for_driver_ok() {
    let (mut f, lines) = new_function(blk());
    let mem = memory();
    let q = MockSplitQueue::create(&mem, QUEUE_ADDR, QUEUE_LEN);
    negotiate(&mut f, VERSION_1);
    setup_queue(&mut f, 0, &q);
    offer(&q, 0, &[writable(DATA_ADDR, 1, None)], 0);
    notify(&mut f, 0);
    notify(&mut f, 9); // no such queue
    assert_eq!(f.process(&mem).unwrap(), 0);
    assert_eq!(lines.levels(), 0);
    assert!(!f.has_pending());
    // DRIVER_OK without agreed features does not start the device either.
    negotiate(&mut f, 0);
    setup_queue(&mut f, 0, &q);
    set_status(&mut f, ACK | DRIVER | DRIVER_OK);
    notify(&mut f, 0);
    assert_eq!(f.process(&mem).unwrap(), 0);
}

#[test]
fn rings_outside_memory_need_a_reset() {
    let (mut f, lines) = new_function(blk());
    let mem = memory();
    let s = negotiate(&mut f, VERSION_1);
    write(&mut f, 0x18, 2, u64::from(QUEUE_LEN));
    // The used ring straddles the end of RAM.
    write(&mut f, 0x20, 8, QUEUE_ADDR.0);
    write(&mut f, 0x28, 8, QUEUE_ADDR.0 + 0x1000);
    write(&mut f, 0x30, 8, MEM_SIZE as u64 - 0x10);
    write(&mut f, 0x1c, 2, 1);
    set_status(&mut f, s | DRIVER_OK);
    notify(&mut f, 0);
    assert!(matches!(
        f.process(&mem),
        Err(VirtioError::QueueInvalid { queue: 0 })
    ));
    assert_ne!(status(&mut f) & 0x40, 0);
    let s = status(&mut f);
    set_status(&mut f, s & !0x40);
    assert_ne!(
        status(&mut f) & 0x40,
        0,
        "the driver cannot clear NEEDS_RESET"
    );
    assert_eq!(read_isr(&mut f), ISR_CONFIG);
    assert_eq!(lines.levels(), 0);
}

#[test]
fn intx_disable_gates_the_line_not_the_isr() {
    let (mut f, lines) = new_function(blk());
    f.signal(ISR_QUEUE);
    assert_eq!(lines.levels(), 1 << IRQ);
    f.config_write(0x04, &0x0400u16.to_le_bytes());
    assert_eq!(lines.levels(), 0, "INTx disabled");
    let mut s = [0u8; 2];
    f.config_read(0x06, &mut s);
    assert_ne!(u16::from_le_bytes(s) & 0x8, 0, "Interrupt Status still set");
    f.config_write(0x04, &0x0000u16.to_le_bytes());
    assert_eq!(lines.levels(), 1 << IRQ);
    assert_eq!(read_isr(&mut f), ISR_QUEUE);
    f.config_read(0x06, &mut s);
    assert_eq!(u16::from_le_bytes(s) & 0x8, 0);
}

#[test]
fn survives_random_register_accesses() {
    let (f, _lines) = new_function(blk());
    let f = Arc::new(Mutex::new(f));
    let mut bus = PciBus::new(DEFAULT_MMIO_WINDOW_START, 0x10_0000).unwrap();
    bus.add_function(f.clone(), IRQ).unwrap();
    let bus = Arc::new(Mutex::new(bus));
    let mut mmio = PciMmio::new(bus.clone());
    crate::testing::hammer(&mut mmio, &[DEFAULT_MMIO_WINDOW_START], BAR0_SIZE, None);
    crate::testing::hammer(&mut *bus.lock().unwrap(), &[CONFIG_ADDRESS_PORT], 8, None);
    let mem = memory();
    let mut f = f.lock().unwrap();
    f.pending = 1;
    let _ = f.process(&mem);
}

#[test]
fn pci_cfg_window_reaches_bar0() {
    let (mut f, lines) = new_function(blk());
    // Find the VIRTIO_PCI_CAP_PCI_CFG capability by walking the list.
    let byte = |f: &mut VirtioPci<Block<MemBackend>>, at: usize| {
        let mut b = [0u8; 1];
        f.config_read(at, &mut b);
        b[0]
    };
    let mut pos = usize::from(byte(&mut f, 0x34));
    while byte(&mut f, pos + 3) != CAP_PCI_CFG {
        pos = usize::from(byte(&mut f, pos + 1));
        assert_ne!(pos, 0, "no PCI_CFG capability");
    }
    let setup = |f: &mut VirtioPci<Block<MemBackend>>, offset: u32, length: u32| {
        f.config_write(pos + PCI_CFG_BAR, &[0]);
        f.config_write(pos + PCI_CFG_OFFSET, &offset.to_le_bytes());
        f.config_write(pos + PCI_CFG_LENGTH, &length.to_le_bytes());
    };
    let mut data = [0u8; 2];
    setup(&mut f, 0x12, 2); // num_queues
    f.config_read(pos + PCI_CFG_DATA, &mut data);
    assert_eq!(u16::from_le_bytes(data), 1);
    setup(&mut f, 0x14, 1); // device_status
    f.config_write(pos + PCI_CFG_DATA, &[ACK]);
    assert_eq!(status(&mut f), ACK);
    // An ISR read through the window clears it like a BAR read.
    f.signal(ISR_QUEUE);
    setup(&mut f, 0x1000, 1);
    f.config_read(pos + PCI_CFG_DATA, &mut data[..1]);
    assert_eq!((data[0], lines.levels()), (ISR_QUEUE, 0));
    // Misaligned or odd lengths do nothing.
    setup(&mut f, 0x13, 2);
    f.config_write(pos + PCI_CFG_DATA, &[0, 0]);
    setup(&mut f, 0x14, 3);
    f.config_write(pos + PCI_CFG_DATA, &[0, 0, 0, 0]);
    assert_eq!(status(&mut f), ACK);
}

#[test]
fn level_line_through_an_elcr_level_pic_input() {
    use crate::pic::{Pic, ELCR_BASE, MASTER_BASE, SLAVE_BASE};
    // Linux's i8259 setup (vectors 0x30/0x38, all unmasked), then firmware marks the PCI
    // line level-triggered in the ELCR.
    let mut pic = Pic::new();
    for (base, v) in [(MASTER_BASE, 0x11), (SLAVE_BASE, 0x11)] {
        pic.write(base, 0, &[v]);
    }
    for (base, v) in [(MASTER_BASE, 0x30), (SLAVE_BASE, 0x38), (MASTER_BASE, 4)] {
        pic.write(base, 1, &[v]);
    }
    for (base, v) in [(SLAVE_BASE, 2), (MASTER_BASE, 1), (SLAVE_BASE, 1)] {
        pic.write(base, 1, &[v]);
    }
    pic.write(MASTER_BASE, 1, &[0]);
    pic.write(SLAVE_BASE, 1, &[0]);
    pic.write(ELCR_BASE, 1, &[1 << (IRQ - 8)]);

    let (mut f, lines) = new_function(blk());
    // What the vCPU loop does at each synchronous exit.
    let sync = |pic: &mut Pic| pic.set_irq_level(IRQ, lines.levels() & 1 << IRQ != 0);
    let vector = 0x38 + IRQ - 8;
    // Linux's handling of an i8259 line: mask it, EOI, run the handler, unmask.
    let mask_and_eoi = |pic: &mut Pic| {
        pic.write(SLAVE_BASE, 1, &[1 << (IRQ - 8)]);
        pic.write(SLAVE_BASE, 0, &[0x20]);
        pic.write(MASTER_BASE, 0, &[0x20]);
    };
    f.signal(ISR_QUEUE);
    sync(&mut pic);
    assert_eq!(pic.acknowledge(), Some(vector));
    // A handler that does not read this device's ISR (another device on the line): the
    // level is still high, so the request comes back on unmask; nothing is lost.
    mask_and_eoi(&mut pic);
    sync(&mut pic);
    pic.write(SLAVE_BASE, 1, &[0]);
    sync(&mut pic);
    assert_eq!(pic.acknowledge(), Some(vector));
    // The virtio handler reads the ISR: the line drops and no request is left.
    mask_and_eoi(&mut pic);
    assert_eq!(read_isr(&mut f), ISR_QUEUE);
    sync(&mut pic);
    pic.write(SLAVE_BASE, 1, &[0]);
    sync(&mut pic);
    assert_eq!(pic.requested_lines(), 0);
    assert_eq!(pic.acknowledge(), None);
}
