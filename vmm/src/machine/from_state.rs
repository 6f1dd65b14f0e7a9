//! A VM continued from a saved state: a snapshot directory, or the state a primary
//! transferred to its backup.

use std::path::Path;
use std::sync::Arc;

use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;

use super::setup::{
    attach_nic, is_replay, log_start, open_log, open_tap, open_trace, pci_setup, StartInputs,
};
use super::{create_vm, LogStream, PairNicRole, Resources, Vm, VmError, VmIo};
use crate::clock::{ClockMode, VmClock};
use crate::disk::{open_disks, snapshot_disks};
use crate::net::host as nic_host;
use crate::platform::Platform;
use crate::snapshot;

impl Vm {
    /// Continue a VM from the snapshot in `dir`.
    pub fn restore(dir: &Path, res: Resources<'_>, io: VmIo) -> Result<Self, VmError> {
        let loaded = snapshot::load(dir)?;
        let disks = snapshot_disks(&loaded.manifest.disks, &res.disks)?;
        tracing::info!(snapshot = %dir.display(), "snapshot loaded");
        Self::from_state(
            loaded.memory,
            loaded.state,
            loaded.manifest.mem_mib,
            loaded.manifest.clock,
            Resources { disks, ..res },
            io,
        )
    }

    /// Continue a VM from its memory and (validated) state: a snapshot read back, or the
    /// state a primary transferred to its backup.
    pub fn from_state(
        memory: GuestMemoryMmap,
        state: crate::state::VmState,
        mem_mib: u64,
        clock_mode: ClockMode,
        res: Resources<'_>,
        io: VmIo,
    ) -> Result<Self, VmError> {
        let VmIo {
            console,
            input_rx,
            pause_request,
            log,
            mut hooks,
        } = io;
        let trace = open_trace(res.trace_exits)?;
        let disks = open_disks(&res.disks)?;
        // A backup's live replay has the NIC of the transferred state, on its own TAP
        // (opened now, read only once live); a replay of a file has its log's, on none.
        let live_backup = hooks.pair_nic == Some(PairNicRole::Backup);
        let replaying = is_replay(&log) && !live_backup;
        let saved_nic = state
            .platform
            .pci
            .as_ref()
            .and_then(|p| p.nic.as_ref())
            .map(|n| n.function.device.mac);
        let restored_nic = if replaying {
            None
        } else {
            nic_host::restore_mac(res.net.as_ref(), saved_nic)?
        };
        let tap = open_tap(res.net.as_ref(), replaying)?;
        let kvm_sys = Kvm::new().map_err(VmError::OpenKvm)?;
        let dirty_log = hooks.dirty_log || matches!(log, LogStream::Record(..));
        let (slots, vcpu_fd) = create_vm(&kvm_sys, &memory, dirty_log)?;
        state.vcpu.restore(&vcpu_fd)?;
        let mut log = open_log(log, &slots.vm, &memory)?;
        // The CMOS base is in the state; logged anyway so every log starts alike.
        let logged = log_start(
            &mut log,
            StartInputs {
                wall_unix_secs: state.platform.cmos.base_unix_secs,
                nic: restored_nic,
                boot_seed: None,
            },
        )?;
        let logged_nic = logged.nic;
        let nic_mac = if replaying {
            nic_host::replay_mac(res.net.as_ref(), logged_nic)?
        } else {
            restored_nic
        };
        let (nic, net) = attach_nic(nic_mac, tap, &mut hooks)?;
        let clock = Arc::new(VmClock::new(clock_mode, state.clock_ns));
        let platform = Platform::restore(
            state.platform,
            clock.clone(),
            console,
            hooks.console_position.clone().unwrap_or_default(),
            pci_setup(disks, nic, &memory),
        )?;
        tracing::info!(ordinal = state.vcpu.ordinal, mem_mib, "VM restored");
        Self::start(
            kvm_sys,
            slots,
            vcpu_fd,
            memory,
            mem_mib,
            clock,
            platform,
            input_rx,
            trace,
            (state.vcpu.ordinal, state.vcpu.halted),
            None,
            pause_request,
            log,
            hooks,
            res.disks,
            net,
        )
    }
}
