//! A VM booted from a kernel (`run`, `record`, `replay`, a primary from scratch).

use std::sync::Arc;

use kvm_ioctls::Kvm;
use vm_memory::Address;

use super::setup::{
    attach_nic, is_replay, log_start, open_log, open_tap, open_trace, pci_setup, StartInputs,
};
use super::{create_vm, LogStream, Vm, VmConfig, VmError, VmIo, DETERMINISTIC_EPOCH};
use crate::boot;
use crate::clock::{ClockMode, VmClock};
use crate::cpu;
use crate::disk::open_disks;
use crate::memory;
use crate::net::host as nic_host;
use crate::platform::Platform;

impl Vm {
    /// Create a VM, load the kernel and start the vCPU thread, paused.
    pub fn boot(config: &VmConfig, io: VmIo) -> Result<Self, VmError> {
        let VmIo {
            console,
            input_rx,
            pause_request,
            log,
            mut hooks,
        } = io;
        // Everything the user named is checked before KVM is touched.
        memory::check_size(config.mem_mib)?;
        let kernel_file = boot::open_kernel(&config.kernel)?;
        let initrd_data = match &config.initrd {
            Some(path) => Some((path, boot::read_initrd(path)?)),
            None => None,
        };
        let trace = open_trace(config.trace_exits.as_deref())?;
        let disks = open_disks(&config.disks)?;
        let replaying = is_replay(&log);
        let tap = open_tap(config.net.as_ref(), replaying)?;
        let kvm_sys = Kvm::new().map_err(VmError::OpenKvm)?;
        let mem = memory::create(config.mem_mib)?;
        let kernel = boot::load_kernel(&mem, kernel_file, &config.kernel, config.mem_mib)?;
        let info = kernel.info;
        let header = kernel.header;
        let initrd = match &initrd_data {
            Some((path, data)) => Some(boot::load_initrd(
                &mem,
                data,
                path,
                kernel.end,
                boot::initrd_addr_max(header.as_ref()),
            )?),
            None => None,
        };
        boot::write_cmdline(&mem, &config.cmdline)?;
        cpu::write_boot_tables(&mem)?;

        let dirty_log = hooks.dirty_log || matches!(log, LogStream::Record(..));
        let (slots, vcpu_fd) = create_vm(&kvm_sys, &mem, dirty_log)?;
        cpu::setup_boot_registers(&vcpu_fd, info.entry)?;
        let mut log = open_log(log, &slots.vm, &mem)?;

        let clock = Arc::new(VmClock::new(config.clock, 0));
        let now = match config.clock {
            ClockMode::Host => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(DETERMINISTIC_EPOCH),
            ClockMode::Exits { .. } => DETERMINISTIC_EPOCH,
        };
        // The wall-clock time the guest starts from is an input like any other.
        let configured_nic = nic_host::boot_mac(config.net.as_ref());
        // So are the kernel's random seed (a deterministic run has none: it would have to
        // be fixed, and a fixed seed credited as random is worse than none).
        let seed = match config.clock {
            ClockMode::Host if config.boot_seed => Some(boot::random_seed()?),
            _ => None,
        };
        let logged = log_start(
            &mut log,
            StartInputs {
                wall_unix_secs: now,
                nic: configured_nic,
                boot_seed: seed,
            },
        )?;
        let (wall, logged_nic) = (logged.wall_unix_secs, logged.nic);
        let setup_data = match &logged.boot_seed {
            Some(seed) => Some(boot::write_rng_seed(&mem, seed)?),
            None => None,
        };
        boot::write_zero_page(&mem, header, initrd, config.cmdline.len(), setup_data)?;
        let nic_mac = if replaying {
            nic_host::replay_mac(config.net.as_ref(), logged_nic)?
        } else {
            configured_nic
        };
        let (nic, net) = attach_nic(nic_mac, tap, &mut hooks)?;
        let platform = Platform::new(
            clock.clone(),
            config.mem_mib,
            wall,
            console,
            hooks.console_position.clone().unwrap_or_default(),
            pci_setup(disks, nic, &mem),
        )?;
        tracing::info!(
            kernel = %config.kernel.display(),
            kind = ?info.kind,
            entry = format_args!("{:#x}", info.entry.raw_value()),
            mem_mib = config.mem_mib,
            "guest loaded"
        );
        Self::start(
            kvm_sys,
            slots,
            vcpu_fd,
            mem,
            config.mem_mib,
            clock,
            platform,
            input_rx,
            trace,
            (0, false),
            config.boot_event_bound_ns,
            pause_request,
            log,
            hooks,
            config.disks.clone(),
            net,
        )
    }
}
