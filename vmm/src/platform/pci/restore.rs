//! Restoring the PCI part from a saved state (a snapshot, a transferred state, a
//! checkpoint): everything is staged (built, and so validated) first, then put in place.

use std::sync::Arc;

use ftvm_devices::pci::{DEFAULT_MMIO_WINDOW_LEN, DEFAULT_MMIO_WINDOW_START};
use ftvm_devices::virtio::Block;
use ftvm_devices::{IrqLines, LevelIrqLine, PciBus, StateError, VirtioPci};

use super::{
    serial, BlockFunction, Disk, DiskBackend, DiskDeviceState, Pci, PciSetup, PciState, PCI_IRQ,
};
use crate::bus::lock;
use crate::platform::nic::{NetFunction, Nic, NicSetup};

fn function_of(
    index: usize,
    config: &DiskBackend,
    line: LevelIrqLine,
    state: &DiskDeviceState,
) -> Result<BlockFunction, StateError> {
    let block = Block::new(config.backend.clone(), config.read_only, &serial(index));
    VirtioPci::from_state(block, line, &state.function)
}

/// A bus and functions built from a state, not in place yet.
pub(crate) struct StagedPci {
    bus: PciBus,
    functions: Vec<BlockFunction>,
    io_crcs: Vec<u32>,
    /// The NIC's function and transmit CRC.
    nic: Option<(NetFunction, u32)>,
}

impl Pci {
    /// The bus and functions of a saved state, over the disks of `setup` (validated: as
    /// many disks as saved, each of the saved size and mode).
    pub fn restore(
        state: &PciState,
        setup: PciSetup,
        irq_lines: &Arc<IrqLines>,
    ) -> Result<Self, StateError> {
        let mut configs = Vec::new();
        for (index, config) in setup.disks.into_iter().enumerate() {
            let line = irq_lines.level_line(PCI_IRQ).ok_or_else(|| {
                StateError::new("PCI", format!("no interrupt source for disk {index}"))
            })?;
            configs.push((config, line));
        }
        let nic_config = match setup.nic {
            Some(nic) => {
                let line = irq_lines
                    .level_line(PCI_IRQ)
                    .ok_or_else(|| StateError::new("PCI", "no interrupt source for the NIC"))?;
                Some((nic, line))
            }
            None => None,
        };
        let StagedPci {
            mut bus,
            functions,
            io_crcs,
            nic: staged_nic,
        } = stage(
            state,
            configs.iter().map(|(c, l)| (c, l)),
            nic_config.as_ref().map(|(c, l)| (c, l)),
        )?;
        let mut disks = Vec::new();
        for (((config, line), function), crc) in configs.into_iter().zip(functions).zip(io_crcs) {
            config.backend.set_io_crc(crc);
            let disk = Disk::new(function, config, line);
            bus.attach_function(disk.pci())
                .map_err(|e| StateError::new("PCI bus", e.to_string()))?;
            disks.push(disk);
        }
        let nic = match (nic_config, staged_nic) {
            (Some((config, line)), Some((function, crc))) => {
                config.sink.set_tx_crc(crc);
                let nic = Nic::new(function, config, line);
                bus.attach_function(nic.pci())
                    .map_err(|e| StateError::new("PCI bus", e.to_string()))?;
                Some(nic)
            }
            _ => None,
        };
        Self::assemble(bus, disks, nic, setup.memory)
            .map_err(|e| StateError::new("PCI", e.to_string()))
    }

    /// Build (and so validate) everything of `state` without touching the running devices.
    pub(crate) fn stage(&self, state: &PciState) -> Result<StagedPci, StateError> {
        stage(
            state,
            self.disks.iter().map(|d| (&d.config, &d.line)),
            self.nic.as_ref().map(|n| (&n.setup, &n.line)),
        )
    }

    /// Put staged devices in place; the port and MMIO buses keep pointing at the same
    /// handles. `restore_crc`: take the backends' running CRCs from the state (a snapshot)
    /// rather than keep this machine's own (a checkpoint loaded by a replayer, whose
    /// disk has seen only what it did itself: a replay that skipped writes must show).
    pub(crate) fn replace(&self, staged: StagedPci, restore_crc: bool) -> Result<(), StateError> {
        let StagedPci {
            mut bus,
            functions,
            io_crcs,
            nic,
        } = staged;
        for (index, ((disk, function), crc)) in
            self.disks.iter().zip(functions).zip(io_crcs).enumerate()
        {
            *lock(&disk.function) = function;
            let backend = &disk.config.backend;
            if restore_crc {
                backend.set_io_crc(crc);
            } else if !backend.check_against(crc) {
                // Checkpoints do not carry disk contents: a copy that went astray stays
                // so. Say it loudly; `ftvm status` counts it.
                tracing::warn!(
                    disk = index,
                    "disk differs from the recording's at a checkpoint: running I/O CRC {:08x} here, {crc:08x} there",
                    backend.io_crc()
                );
            }
            bus.attach_function(disk.pci())
                .map_err(|e| StateError::new("PCI bus", e.to_string()))?;
        }
        if let (Some(mine), Some((function, crc))) = (&self.nic, nic) {
            *lock(&mine.function) = function;
            if restore_crc {
                mine.setup.sink.set_tx_crc(crc);
            }
            bus.attach_function(mine.pci())
                .map_err(|e| StateError::new("PCI bus", e.to_string()))?;
        }
        *lock(&self.bus) = bus;
        Ok(())
    }
}

/// The bus and functions of `state` over `disks` and `nic` (configuration and INTx source
/// each).
fn stage<'a>(
    state: &PciState,
    disks: impl ExactSizeIterator<Item = (&'a DiskBackend, &'a LevelIrqLine)>,
    nic: Option<(&NicSetup, &LevelIrqLine)>,
) -> Result<StagedPci, StateError> {
    if state.disks.len() != disks.len() {
        return Err(StateError::new(
            "PCI",
            format!(
                "the state has {} disks, this machine {}",
                state.disks.len(),
                disks.len()
            ),
        ));
    }
    let nic = match (nic, &state.nic) {
        (None, None) => None,
        (Some((setup, line)), Some(saved)) => {
            Some((Nic::stage(setup, line.clone(), saved)?, saved.tx_crc))
        }
        (mine, saved) => {
            let has = |b: bool| if b { "a NIC" } else { "no NIC" };
            return Err(StateError::new(
                "PCI",
                format!(
                    "the state has {}, this machine {}",
                    has(saved.is_some()),
                    has(mine.is_some())
                ),
            ));
        }
    };
    let bus = PciBus::from_state(
        &state.bus,
        DEFAULT_MMIO_WINDOW_START,
        DEFAULT_MMIO_WINDOW_LEN,
    )?;
    let mut functions = Vec::new();
    for (index, ((config, line), saved)) in disks.zip(&state.disks).enumerate() {
        functions.push(function_of(index, config, line.clone(), saved)?);
    }
    Ok(StagedPci {
        bus,
        functions,
        io_crcs: state.disks.iter().map(|d| d.io_crc).collect(),
        nic,
    })
}
