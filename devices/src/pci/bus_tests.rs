use super::*;

/// A function with one 32-bit BAR of 4 KiB and a 64-bit BAR of 16 KiB that remembers the
/// last BAR access.
struct Dummy {
    config: ConfigSpace,
    last: Option<(usize, u64, Vec<u8>)>,
}

impl Dummy {
    fn new() -> Arc<Mutex<Self>> {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x1af4,
            device: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        config.add_bar(0, 0x1000, BarKind::Memory32).unwrap();
        config.add_bar(2, 0x4000, BarKind::Memory64).unwrap();
        config.set_interrupt_pin(PIN_INTA);
        Arc::new(Mutex::new(Self { config, last: None }))
    }
}

impl PciFunction for Dummy {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(bar as u8 + 0x10);
        self.last = Some((bar, offset, vec![]));
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.last = Some((bar, offset, data.to_vec()));
    }
}

fn bus() -> PciBus {
    PciBus::new(DEFAULT_MMIO_WINDOW_START, DEFAULT_MMIO_WINDOW_LEN).unwrap()
}

fn address(device: u32, reg: u32) -> u32 {
    0x8000_0000 | device << 11 | reg
}

fn cfg_read(bus: &mut PciBus, device: u32, reg: u32, port: u64, width: usize) -> u32 {
    bus.write(CONFIG_ADDRESS_PORT, 0, &address(device, reg).to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(
        CONFIG_ADDRESS_PORT,
        port - CONFIG_ADDRESS_PORT,
        &mut b[..width],
    );
    u32::from_le_bytes(b)
}

fn cfg_write32(bus: &mut PciBus, device: u32, reg: u32, value: u32) {
    bus.write(CONFIG_ADDRESS_PORT, 0, &address(device, reg).to_le_bytes());
    bus.write(CONFIG_ADDRESS_PORT, 4, &value.to_le_bytes());
}

#[test]
fn linux_type1_probe_finds_the_host_bridge() {
    let mut bus = bus();
    // pci_check_type1: a byte to 0xcfb, then the address register must hold 0x80000000.
    bus.write(CONFIG_ADDRESS_PORT, 3, &[0x01]);
    bus.write(CONFIG_ADDRESS_PORT, 0, &0x8000_0000u32.to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(CONFIG_ADDRESS_PORT, 0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    // pci_sanity_check: PCI_CLASS_DEVICE (word at 0x0a) of devfn 0 is a host bridge.
    assert_eq!(cfg_read(&mut bus, 0, 0x08, 0xcfe, 2), 0x0600);
    assert_eq!(cfg_read(&mut bus, 0, 0x00, 0xcfc, 4), 0x1237_8086);
    assert_eq!(cfg_read(&mut bus, 0, 0x0c, 0xcfe, 1), 0, "header type 0");
}

#[test]
fn empty_slots_and_other_buses_read_all_ones() {
    let mut bus = bus();
    assert_eq!(cfg_read(&mut bus, 5, 0, 0xcfc, 4), 0xffff_ffff);
    bus.write(
        CONFIG_ADDRESS_PORT,
        0,
        &(1u32 << 31 | 1 << 16).to_le_bytes(),
    );
    let mut b = [0u8; 2];
    bus.read(CONFIG_ADDRESS_PORT, 4, &mut b);
    assert_eq!(b, [0xff, 0xff], "bus 1");
    bus.write(CONFIG_ADDRESS_PORT, 0, &(1u32 << 31 | 1 << 8).to_le_bytes());
    bus.read(CONFIG_ADDRESS_PORT, 4, &mut b);
    assert_eq!(b, [0xff, 0xff], "function 1 of the bridge");
    bus.write(CONFIG_ADDRESS_PORT, 0, &0u32.to_le_bytes());
    bus.read(CONFIG_ADDRESS_PORT, 4, &mut b);
    assert_eq!(b, [0xff, 0xff], "enable bit clear");
    bus.write(
        CONFIG_ADDRESS_PORT,
        0,
        &(1u32 << 31 | 1 << 24).to_le_bytes(),
    );
    bus.read(CONFIG_ADDRESS_PORT, 4, &mut b);
    assert_eq!(b, [0xff, 0xff], "extended register 0x100 of the bridge");
    let mut a = [0u8; 4];
    bus.read(CONFIG_ADDRESS_PORT, 0, &mut a);
    assert_eq!(u32::from_le_bytes(a), 1 << 31 | 1 << 24);
}

#[test]
fn add_function_places_bars_and_routes_the_interrupt() {
    let mut bus = bus();
    let a = Dummy::new();
    let b = Dummy::new();
    assert_eq!(bus.add_function(a.clone(), 10).unwrap(), 1);
    assert_eq!(bus.add_function(b.clone(), 11).unwrap(), 2);
    let ca = a.lock().unwrap().config.clone();
    let cb = b.lock().unwrap().config.clone();
    assert_eq!(ca.bar_address(0), Some(0xe000_0000));
    assert_eq!(ca.bar_address(2), Some(0xe000_4000), "aligned to 16 KiB");
    assert_eq!(cb.bar_address(0), Some(0xe000_8000));
    assert_eq!((ca.interrupt_line(), cb.interrupt_line()), (10, 11));
    assert!(ca.memory_enabled());
    // The guest sees them through the ports: vendor, Interrupt Line and Pin = INTA.
    assert_eq!(cfg_read(&mut bus, 1, 0, 0xcfc, 4), 0x1041_1af4);
    assert_eq!(cfg_read(&mut bus, 2, 0x3c, 0xcfc, 2), 0x010b);
    assert_eq!(cfg_read(&mut bus, 2, 0x3c, 0xcfd, 1), 1);
    assert_eq!(
        bus.add_function(Dummy::new(), 16),
        Err(PciError::BadIrq(16))
    );
}

#[test]
fn bar_sizing_through_the_ports() {
    let mut bus = bus();
    bus.add_function(Dummy::new(), 10).unwrap();
    cfg_write32(&mut bus, 1, 0x10, 0xffff_ffff);
    assert_eq!(cfg_read(&mut bus, 1, 0x10, 0xcfc, 4), 0xffff_f000);
    cfg_write32(&mut bus, 1, 0x10, 0xe000_0000);
    assert_eq!(cfg_read(&mut bus, 1, 0x10, 0xcfc, 4), 0xe000_0000);
}

#[test]
fn mmio_reaches_the_decoding_bar_only_while_memory_is_enabled() {
    let mut bus = bus();
    let f = Dummy::new();
    bus.add_function(f.clone(), 10).unwrap();
    let bus = Arc::new(Mutex::new(bus));
    let mut mmio = PciMmio::new(bus.clone());
    let mut b = [0u8; 4];
    mmio.read(DEFAULT_MMIO_WINDOW_START, 0x4010, &mut b);
    assert_eq!(b, [0x12; 4]);
    mmio.write(DEFAULT_MMIO_WINDOW_START, 0x8, &[7, 0]);
    assert_eq!(f.lock().unwrap().last, Some((0, 8, vec![7, 0])));
    mmio.read(DEFAULT_MMIO_WINDOW_START, 0x9000, &mut b);
    assert_eq!(b, [0xff; 4], "nothing there");
    // The guest turns memory decoding off: the BAR goes quiet.
    cfg_write32(&mut lock(&bus), 1, 0x04, 0);
    f.lock().unwrap().last = None;
    mmio.write(DEFAULT_MMIO_WINDOW_START, 0x8, &[7, 0]);
    assert_eq!(f.lock().unwrap().last, None);
    mmio.read(u64::MAX, 1, &mut b);
}

#[test]
fn window_and_bus_limits() {
    assert!(PciBus::new(0xffff_f000, 0x2000).is_err());
    assert!(PciBus::new(0xe000_0000, 0).is_err());
    let mut small = PciBus::new(0xe000_0000, 0x2000).unwrap();
    assert_eq!(
        small.add_function(Dummy::new(), 10),
        Err(PciError::WindowFull { size: 0x4000 })
    );
    let mut bus = bus();
    for _ in 1..MAX_DEVICES {
        bus.add_function(Dummy::new(), 10).unwrap();
    }
    assert_eq!(bus.add_function(Dummy::new(), 10), Err(PciError::BusFull));
}

#[test]
fn state_round_trip_and_validation() {
    let mut bus = bus();
    bus.write(CONFIG_ADDRESS_PORT, 0, &address(0, 4).to_le_bytes());
    bus.write(CONFIG_ADDRESS_PORT, 4, &[0x06, 0]);
    let state = bus.state();
    let (start, len) = bus.window();
    let other = PciBus::from_state(&state, start, len).unwrap();
    assert_eq!(other.state(), state);
    let mut bad = state.clone();
    bad.address |= 1;
    assert!(PciBus::from_state(&bad, start, len).is_err());
    let mut bad = state.clone();
    bad.bridge.bytes[0] = 0;
    assert!(PciBus::from_state(&bad, start, len).is_err());
    assert!(PciBus::from_state(&state, 0xffff_f000, 0x2000).is_err());
}

#[test]
fn restored_functions_keep_their_bars() {
    let mut bus = bus();
    let f = Dummy::new();
    bus.add_function(f.clone(), 10).unwrap();
    // The guest moves BAR0 to the window's far end.
    cfg_write32(&mut bus, 1, 0x10, 0xe800_0000);
    let saved = f.lock().unwrap().config.state();

    let mut restored = PciBus::from_state(
        &bus.state(),
        DEFAULT_MMIO_WINDOW_START,
        DEFAULT_MMIO_WINDOW_LEN,
    )
    .unwrap();
    let g = Dummy::new();
    g.lock().unwrap().config.restore(&saved).unwrap();
    assert_eq!(restored.attach_function(g.clone()).unwrap(), 1);
    assert_eq!(g.lock().unwrap().config.bar_address(0), Some(0xe800_0000));
    assert_eq!(g.lock().unwrap().config.interrupt_line(), 10);
    // A device added afterwards is placed past what the restored one decodes.
    let h = Dummy::new();
    restored.add_function(h.clone(), 11).unwrap();
    assert!(h.lock().unwrap().config.bar_address(0).unwrap() >= 0xe800_1000);
}

#[test]
fn survives_random_accesses() {
    let mut bus = bus();
    bus.add_function(Dummy::new(), 10).unwrap();
    crate::testing::hammer(&mut bus, &[CONFIG_ADDRESS_PORT], CONFIG_PORTS_LEN, None);
}
