//! The platform without KVM: devices on their buses, saved and restored.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use ftvm_devices::Clock;

use super::devices::IRQS;
use super::*;

/// Guest time that stands still: what the devices compute from it stays put.
struct Frozen;

impl Clock for Frozen {
    fn now_ns(&self) -> u64 {
        1_000_000
    }
}

const WALL: u64 = 1_700_000_000;

fn platform() -> Platform {
    Platform::new(
        Arc::new(Frozen),
        64,
        WALL,
        Box::new(std::io::sink()),
        Arc::new(AtomicU64::new(0)),
        None,
    )
    .unwrap()
}

/// A platform whose devices are not in their power-on state.
fn used_platform() -> Platform {
    let p = platform();
    // Unmask the timer and serial lines, program the PIT, type into the UART, write the
    // console and the scratch register.
    assert!(p.pio.write(0x21, &[0xec]));
    assert!(p.pio.write(0x43, &[0x34]));
    assert!(p.pio.write(0x40, &[0x9c]));
    assert!(p.pio.write(0x40, &[0x2e]));
    let mut input: VecDeque<u8> = b"hi".iter().copied().collect();
    assert_eq!(p.feed_serial(&mut input), b"hi");
    assert!(p.pio.write(COM1_BASE, b"x"));
    assert!(p
        .mmio
        .write(crate::layout::SYSCTL_START + 0xc, &7u32.to_le_bytes()));
    p
}

fn read_u32(bus: &Bus, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.read(addr, &mut b), "nothing at {addr:#x}");
    u32::from_le_bytes(b)
}

#[test]
fn devices_placed_on_the_buses_answer() {
    let p = platform();
    // The system controller's magic and memory size, over MMIO.
    let sysctl = crate::layout::SYSCTL_START;
    assert_eq!(read_u32(&p.mmio, sysctl), ftvm_devices::sysctl::MAGIC);
    assert_eq!(read_u32(&p.mmio, sysctl + 8), 64);
    // The master PIC's mask register (all masked at power-on), over port I/O.
    let mut b = [0u8; 1];
    assert!(p.pio.read(0x21, &mut b));
    assert_eq!(b[0], 0xff);
    // An absent legacy port reads all ones; a port nothing claims is not on the bus.
    assert!(p.pio.read(0x2f8, &mut b));
    assert_eq!(b[0], 0xff);
    assert!(!p.pio.read(0x500, &mut b));
}

#[test]
fn a_state_round_trips_through_both_encodings_and_a_restore() {
    let p = used_platform();
    let state = p.state();
    assert_eq!(state.console_bytes, 1);
    assert_eq!(state.sysctl.scratch, 7);

    let json = serde_json::to_vec(&state).unwrap();
    assert_eq!(
        serde_json::from_slice::<PlatformState>(&json).unwrap(),
        state
    );
    let cfg = bincode::config::standard();
    let bin = bincode::serde::encode_to_vec(&state, cfg).unwrap();
    let (decoded, _): (PlatformState, usize) =
        bincode::serde::decode_from_slice(&bin, cfg).unwrap();
    assert_eq!(decoded, state);

    let position = Arc::new(AtomicU64::new(0));
    let restored = Platform::restore(
        state.clone(),
        Arc::new(Frozen),
        Box::new(std::io::sink()),
        position.clone(),
        None,
    )
    .unwrap();
    assert_eq!(restored.state(), state);
    assert_eq!(position.load(std::sync::atomic::Ordering::SeqCst), 1);

    let fresh = platform();
    fresh.load_state(state.clone()).unwrap();
    assert_eq!(fresh.state(), state);
}

#[test]
fn a_state_is_encoded_as_one_entry_per_device() {
    let json = serde_json::to_value(platform().state()).unwrap();
    let devices = json["devices"].as_array().unwrap();
    assert_eq!(devices.len(), DeviceKind::ALL.len());
    let kinds: Vec<DeviceKind> = devices
        .iter()
        .map(|d| {
            serde_json::from_value::<DeviceState>(d.clone())
                .unwrap()
                .kind()
        })
        .collect();
    assert_eq!(kinds, DeviceKind::ALL);
}

/// Why a power-on state with its device list changed by `edit` does not decode.
fn refusal(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> String {
    let mut json = serde_json::to_value(platform().state()).unwrap();
    edit(json["devices"].as_array_mut().unwrap());
    serde_json::from_value::<PlatformState>(json)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_state_listing_a_device_twice_is_refused() {
    let err = refusal(|d| {
        let pit = d[1].clone();
        d.push(pit);
    });
    assert!(err.contains("Pit device more than once"), "{err}");
}

#[test]
fn a_state_missing_a_device_is_refused() {
    let err = refusal(|d| d.retain(|v| v.get("serial").is_none()));
    assert!(err.contains("Serial device is missing"), "{err}");
}

#[test]
fn an_invalid_state_changes_nothing() {
    let p = used_platform();
    let before = p.state();
    let mut bad = platform().state();
    // Invalid in one device only: the devices restored before it must not change.
    bad.sysctl.mem_mib = 0;
    assert!(matches!(
        p.load_state(bad.clone()),
        Err(PlatformError::State(_))
    ));
    assert_eq!(p.state(), before);
    assert!(Platform::restore(
        bad,
        Arc::new(Frozen),
        Box::new(std::io::sink()),
        Arc::new(AtomicU64::new(0)),
        None,
    )
    .is_err());
}

#[test]
fn no_two_devices_share_an_interrupt_line() {
    let mut seen = HashSet::new();
    for (kind, irq) in IRQS {
        if let Some(irq) = irq {
            assert!(seen.insert(*irq), "{kind:?} reuses IRQ {irq}");
        }
    }
    assert!(seen.contains(&SERIAL_IRQ));
}

/// A platform with one 64 KiB disk (a temporary file) on its PCI bus.
fn platform_with_disk(tag: &str) -> (Platform, PciSetup) {
    let path = std::env::temp_dir().join(format!("ftvm-pt-{}-{tag}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; 64 << 10]).unwrap();
    let spec = crate::disk::DiskSpec {
        path: path.clone(),
        read_only: false,
    };
    let disks = crate::disk::open_disks(&[spec]).unwrap();
    std::fs::remove_file(path).unwrap();
    let memory = crate::memory::create(16).unwrap();
    let setup = || PciSetup {
        disks: disks.clone(),
        nic: None,
        memory: memory.clone(),
    };
    let p = Platform::new(
        Arc::new(Frozen),
        16,
        WALL,
        Box::new(std::io::sink()),
        Arc::new(AtomicU64::new(0)),
        Some(setup()),
    )
    .unwrap();
    (p, setup())
}

#[test]
fn pci_bus_is_there_only_with_disks_and_its_state_is_checked() {
    // Without disks, configuration mechanism #1 is an absent range; line 10 stays edge.
    let p = platform();
    assert!(p.pio.write(0xcf8, &0x8000_0000u32.to_le_bytes()));
    let mut id = [0u8; 4];
    assert!(p.pio.read(0xcfc, &mut id));
    assert_eq!(id, [0xff; 4]);
    assert!(p.state().pci.is_none());

    let (p, setup) = platform_with_disk("state");
    assert!(p.pio.write(0xcf8, &0x8000_0800u32.to_le_bytes()));
    assert!(p.pio.read(0xcfc, &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x1042_1af4, "virtio-blk at 00:01.0");
    let mut elcr = [0u8];
    assert!(p.pio.read(0x4d1, &mut elcr));
    assert_eq!(elcr[0] & 0x04, 0x04, "IRQ 10 is level-triggered");
    let state = p.state();
    assert_eq!(state.pci.as_ref().map(|s| s.disks.len()), Some(1));

    // The same machine takes its own state back; one without disks refuses it.
    p.load_state(state.clone()).unwrap();
    assert_eq!(p.state(), state);
    let restore = |pci| {
        Platform::restore(
            state.clone(),
            Arc::new(Frozen),
            Box::new(std::io::sink()),
            Arc::new(AtomicU64::new(0)),
            pci,
        )
    };
    assert_eq!(restore(Some(setup)).unwrap().state(), state);
    assert!(matches!(
        restore(None),
        Err(PlatformError::DiskCount { saved: 1, given: 0 })
    ));
    assert!(matches!(
        platform().load_state(state),
        Err(PlatformError::DiskCount { saved: 1, given: 0 })
    ));
}
