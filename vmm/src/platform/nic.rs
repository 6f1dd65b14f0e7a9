//! The virtio-net function of the PCI part: its configuration (MAC, where transmitted
//! frames go), its saved state (the function and the transmit CRC), and received frames
//! written into guest memory at the vCPU's request.

use std::sync::{Arc, Mutex};

use ftvm_devices::pci::PciFunction;
use ftvm_devices::virtio::{Delivery, Net, NetState, VirtioError, VirtioPciState};
use ftvm_devices::{LevelIrqLine, StateError, VirtioPci};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemory;

use crate::bus::lock;
use crate::net::tx::NicSink;

pub(super) type NetFunction = VirtioPci<Net<NicSink>>;

/// A NIC as the machine's configuration gives it.
#[derive(Clone)]
pub struct NicSetup {
    /// The NIC's MAC address.
    pub mac: [u8; 6],
    /// Where the frames the guest transmits go.
    pub sink: NicSink,
}

/// The saved NIC: the virtio-pci function (queues, features, MAC, counters) and the
/// running CRC32 of the frames the guest transmitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicDeviceState {
    /// The virtio-pci function with its virtio-net device.
    pub function: VirtioPciState<NetState>,
    /// Running CRC32 of the frames the guest transmitted.
    pub tx_crc: u32,
}

pub(super) struct Nic {
    pub function: Arc<Mutex<NetFunction>>,
    pub setup: NicSetup,
    /// The function's INTx source, kept to give to a function rebuilt from a state.
    pub line: LevelIrqLine,
}

impl Nic {
    pub fn power_on(setup: NicSetup, line: LevelIrqLine) -> Result<Self, VirtioError> {
        let f = VirtioPci::new(Net::new(setup.mac, setup.sink.clone()), line.clone())?;
        Ok(Self::new(f, setup, line))
    }

    pub fn new(function: NetFunction, setup: NicSetup, line: LevelIrqLine) -> Self {
        Self {
            function: Arc::new(Mutex::new(function)),
            setup,
            line,
        }
    }

    /// The function of a saved state over this configuration (the MAC must match).
    pub fn stage(
        setup: &NicSetup,
        line: LevelIrqLine,
        state: &NicDeviceState,
    ) -> Result<NetFunction, StateError> {
        let net = Net::new(setup.mac, setup.sink.clone());
        VirtioPci::from_state(net, line, &state.function)
    }

    /// The function as the PCI bus holds it.
    pub fn pci(&self) -> Arc<Mutex<dyn PciFunction>> {
        self.function.clone()
    }

    pub fn state(&self) -> NicDeviceState {
        NicDeviceState {
            function: lock(&self.function).state(),
            tx_crc: self.setup.sink.tx_crc(),
        }
    }

    /// Transmit what the driver notified; returns the chains completed.
    pub fn process<M: GuestMemory>(&self, mem: &M) -> usize {
        let mut f = lock(&self.function);
        if !f.has_pending() {
            return 0;
        }
        match f.process(mem) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("virtio-net: the guest driver broke the device: {e}");
                0
            }
        }
    }

    /// Offer one received frame to the receive queue.
    pub fn deliver<M: GuestMemory>(&self, mem: &M, frame: &[u8]) -> Result<Delivery, VirtioError> {
        let result = lock(&self.function).deliver_frame(mem, frame);
        if let Err(e) = &result {
            tracing::warn!("virtio-net: the guest driver broke the receive queue: {e}");
        }
        result
    }
}
