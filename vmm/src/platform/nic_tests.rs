//! The NIC on the platform's PCI bus: alone it makes the bus, it sits after the disks, its
//! state goes round and is refused by a machine without it or with another MAC, and a
//! frame offered before the driver runs changes nothing.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use ftvm_devices::virtio::Delivery;
use ftvm_devices::Clock;

use super::{NicSetup, PciSetup, Platform, PlatformError};
use crate::net::tx::{DiscardTx, NicSink};

struct Frozen;
impl Clock for Frozen {
    fn now_ns(&self) -> u64 {
        0
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn setup(mac: Option<[u8; 6]>, memory: &vm_memory::GuestMemoryMmap) -> Option<PciSetup> {
    Some(PciSetup {
        disks: Vec::new(),
        nic: mac.map(|mac| NicSetup {
            mac,
            sink: NicSink::new(Arc::new(DiscardTx)),
        }),
        memory: memory.clone(),
    })
}

fn platform(pci: Option<PciSetup>) -> Platform {
    Platform::new(
        Arc::new(Frozen),
        16,
        0,
        Box::new(std::io::sink()),
        Arc::new(AtomicU64::new(0)),
        pci,
    )
    .unwrap()
}

fn restore(state: &super::PlatformState, pci: Option<PciSetup>) -> Result<Platform, PlatformError> {
    Platform::restore(
        state.clone(),
        Arc::new(Frozen),
        Box::new(std::io::sink()),
        Arc::new(AtomicU64::new(0)),
        pci,
    )
}

#[test]
fn a_nic_alone_makes_the_pci_bus_and_its_state_is_checked() {
    let memory = crate::memory::create(16).unwrap();
    let p = platform(setup(Some(MAC), &memory));
    let mut id = [0u8; 4];
    assert!(p.pio.write(0xcf8, &0x8000_0800u32.to_le_bytes()));
    assert!(p.pio.read(0xcfc, &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x1041_1af4, "virtio-net at 00:01.0");
    assert_eq!(p.nic_mac(), Some(MAC));
    let state = p.state();
    let nic = state.pci.as_ref().and_then(|s| s.nic.as_ref()).unwrap();
    assert_eq!(nic.function.device.mac, MAC);

    // Its own state back, in place and on a new machine.
    p.load_state(state.clone()).unwrap();
    assert_eq!(p.state(), state);
    assert_eq!(
        restore(&state, setup(Some(MAC), &memory)).unwrap().state(),
        state
    );

    // Without a NIC, or with another MAC: refused.
    assert!(matches!(
        restore(&state, None),
        Err(PlatformError::NicPresence {
            saved: true,
            given: false
        })
    ));
    assert!(matches!(
        platform(None).load_state(state.clone()),
        Err(PlatformError::NicPresence { .. })
    ));
    let other = restore(&state, setup(Some([0x52, 0x54, 0, 0, 0, 1]), &memory));
    assert!(
        matches!(&other, Err(PlatformError::State(e)) if e.to_string().contains("MAC")),
        "{:?}",
        other.err()
    );
    // And a machine with a NIC refuses a state without one.
    let plain = platform(None).state();
    assert!(matches!(
        p.load_state(plain),
        Err(PlatformError::NicPresence {
            saved: false,
            given: true
        })
    ));
}

#[test]
fn a_frame_before_the_driver_runs_changes_nothing() {
    let memory = crate::memory::create(16).unwrap();
    let p = platform(setup(Some(MAC), &memory));
    let before = p.state();
    let result = p.deliver_frame(&[0u8; 60]).unwrap().unwrap();
    assert_eq!(result, Delivery::NoBuffer);
    assert_eq!(p.state(), before, "not logged, so it must not show");
    assert!(p.take_device_pages().is_empty());
    assert!(platform(None).deliver_frame(&[0u8; 60]).is_none());
}
