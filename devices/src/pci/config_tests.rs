use super::*;

fn ids() -> PciIds {
    PciIds {
        vendor: 0x1af4,
        device: 0x1042,
        revision: 1,
        class: 0x01_80_00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    }
}

fn read32(c: &ConfigSpace, offset: usize) -> u32 {
    let mut b = [0; 4];
    c.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(c: &mut ConfigSpace, offset: usize, v: u32) {
    c.write(offset, &v.to_le_bytes());
}

#[test]
fn identity_is_read_only() {
    let mut c = ConfigSpace::new(ids());
    assert_eq!(read32(&c, 0), 0x1042_1af4);
    assert_eq!(read32(&c, 8), 0x0180_0001, "class 01/80/00, revision 1");
    write32(&mut c, 0, 0xdead_beef);
    write32(&mut c, 8, 0xdead_beef);
    write32(&mut c, 0x2c, 0xdead_beef);
    assert_eq!(read32(&c, 0), 0x1042_1af4);
    assert_eq!(read32(&c, 8), 0x0180_0001);
    assert_eq!(read32(&c, 0x2c), 0x1100_1af4);
}

#[test]
fn command_register_keeps_only_implemented_bits() {
    let mut c = ConfigSpace::new(ids());
    c.write(COMMAND, &0xffffu16.to_le_bytes());
    assert_eq!(
        c.command(),
        COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
    );
    assert!(c.memory_enabled() && c.intx_disabled());
}

#[test]
fn bar32_sizing_protocol() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(0, 0x4000, BarKind::Memory32).unwrap();
    c.set_bar_address(0, 0xe000_0000).unwrap();
    assert_eq!(read32(&c, BAR0), 0xe000_0000);
    write32(&mut c, BAR0, 0xffff_ffff);
    assert_eq!(read32(&c, BAR0), 0xffff_c000, "size mask, 32-bit memory");
    write32(&mut c, BAR0, 0xe000_1234);
    assert_eq!(
        c.bar_address(0),
        Some(0xe000_0000),
        "low bits are not writable"
    );
    // Unused BARs read zero and stay zero (size 0 = absent).
    write32(&mut c, BAR0 + 4, 0xffff_ffff);
    assert_eq!(read32(&c, BAR0 + 4), 0);
}

#[test]
fn bar64_sizing_protocol() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(2, 0x4000, BarKind::Memory64).unwrap();
    write32(&mut c, BAR0 + 8, 0xffff_ffff);
    write32(&mut c, BAR0 + 12, 0xffff_ffff);
    assert_eq!(read32(&c, BAR0 + 8), 0xffff_c004, "type 10b = 64-bit");
    assert_eq!(read32(&c, BAR0 + 12), 0xffff_ffff);
    c.set_bar_address(2, 0x1_0000_8000).unwrap();
    assert_eq!(c.bar_address(2), Some(0x1_0000_8000));
    assert_eq!(
        c.add_bar(3, 0x1000, BarKind::Memory32),
        Err(PciError::BarInUse(3))
    );
}

#[test]
fn bar_declarations_are_checked() {
    let mut c = ConfigSpace::new(ids());
    assert!(c.add_bar(6, 0x1000, BarKind::Memory32).is_err());
    assert!(c.add_bar(5, 0x1000, BarKind::Memory64).is_err());
    assert!(c.add_bar(0, 0x1001, BarKind::Memory32).is_err());
    assert!(c.add_bar(0, 8, BarKind::Memory32).is_err());
    c.add_bar(0, 0x1000, BarKind::Memory32).unwrap();
    assert!(c.add_bar(0, 0x1000, BarKind::Memory32).is_err());
    assert!(c.set_bar_address(0, 0xe000_0800).is_err(), "misaligned");
    assert!(c.set_bar_address(0, 0xffff_ffff_0000_0000).is_err());
    assert_eq!(c.set_bar_address(1, 0), Err(PciError::NoSuchBar(1)));
}

#[test]
fn decode_honours_memory_enable() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(0, 0x4000, BarKind::Memory32).unwrap();
    c.set_bar_address(0, 0xe000_4000).unwrap();
    assert_eq!(c.decode(0xe000_4010), None, "memory decoding off");
    c.set_command(COMMAND_MEMORY);
    assert_eq!(c.decode(0xe000_4010), Some((0, 0x10)));
    assert_eq!(c.decode(0xe000_8000), None);
    assert_eq!(c.decode(0xe000_3fff), None);
}

#[test]
fn capabilities_chain_and_are_read_only() {
    let mut c = ConfigSpace::new(ids());
    let a = c.add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0]).unwrap();
    let b = c.add_capability(&[0x09, 0xaa, 16, 2]).unwrap();
    assert_eq!((a, b), (0x40, 0x48));
    let mut p = [0u8; 1];
    c.read(CAPABILITIES_POINTER, &mut p);
    assert_eq!(p[0], 0x40);
    assert_ne!(
        read32(&c, STATUS - 2) >> 16 & u32::from(STATUS_CAPABILITIES),
        0
    );
    assert_eq!(read32(&c, a) & 0xff00, 0x4800, "a links to b");
    assert_eq!(read32(&c, b) & 0xff00, 0, "b ends the list");
    write32(&mut c, a, 0);
    assert_eq!(read32(&c, a), 0x0110_4809);
    assert!(c.add_capability(&[0; 3]).is_err());
    assert!(c.add_capability(&[0; 200]).is_err());
}

#[test]
fn accesses_past_the_end_are_harmless() {
    let mut c = ConfigSpace::new(ids());
    let mut b = [0u8; 4];
    c.read(0xfe, &mut b);
    assert_eq!(&b[2..], &[0xff, 0xff]);
    c.write(0xfe, &[1, 2, 3, 4]);
    c.read(usize::MAX, &mut b);
    c.write(usize::MAX, &[1, 2]);
}

#[test]
fn restore_accepts_writable_changes_and_refuses_read_only_ones() {
    let mut c = ConfigSpace::new(ids());
    c.add_bar(0, 0x4000, BarKind::Memory32).unwrap();
    c.set_interrupt_pin(PIN_INTA);
    c.set_bar_address(0, 0xe000_0000).unwrap();
    c.set_interrupt_line(10);
    c.set_interrupt_status(true);
    let saved = c.state();

    let mut fresh = ConfigSpace::new(ids());
    fresh.add_bar(0, 0x4000, BarKind::Memory32).unwrap();
    fresh.set_interrupt_pin(PIN_INTA);
    let template = fresh.clone();
    fresh.restore(&saved).unwrap();
    assert_eq!(fresh.bar_address(0), Some(0xe000_0000));
    assert_eq!(fresh.interrupt_line(), 10);

    let mut bad = saved.clone();
    bad.bytes[DEVICE_ID] = 0x41;
    assert!(matches!(
        template.clone().restore(&bad),
        Err(PciError::ReadOnlyChanged { offset: 2, .. })
    ));
    let mut bad = saved.clone();
    bad.bytes[BAR0 + 1] = 0x12; // inside the BAR's size: read-only
    assert!(template.clone().restore(&bad).is_err());
    let mut bad = saved;
    bad.bytes.pop();
    assert_eq!(
        template.clone().restore(&bad),
        Err(PciError::BadStateLength(255))
    );
}
