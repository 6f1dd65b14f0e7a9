//! The last step of building a VM, whichever way it was built: the vCPU thread, paused.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;

use super::{FtHooks, Vm, VmError};
use crate::clock::{ClockMode, VmClock};
use crate::compat::breakpoints::BreakpointProbe;
use crate::compat::syscall::SyscallProbe;
use crate::disk::DiskSpec;
use crate::kicker::KickPurpose;
use crate::memory::MemorySlots;
use crate::net::host::NetHost;
use crate::platform::Platform;
use crate::vcpu::{LogMode, VcpuHandle, VcpuParts};

impl Vm {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        kvm_sys: Kvm,
        slots: MemorySlots,
        vcpu_fd: kvm_ioctls::VcpuFd,
        mem: GuestMemoryMmap,
        mem_mib: u64,
        clock: Arc<VmClock>,
        platform: Platform,
        input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>,
        trace: Option<Box<dyn std::io::Write + Send>>,
        (ordinal, halted): (u64, bool),
        boot_event_bound_ns: Option<u64>,
        pause_request: Arc<std::sync::atomic::AtomicBool>,
        log: LogMode,
        hooks: FtHooks,
        disks: Vec<DiskSpec>,
        net: Option<NetHost>,
    ) -> Result<Self, VmError> {
        let replaying = matches!(log, LogMode::Replay(_));
        // A replayer takes input and time only from its log.
        let input_rx = if replaying { None } else { input_rx };
        let syscall_probe = crate::compat::syscall::probe(&kvm_sys)?;
        if syscall_probe == SyscallProbe::Broken {
            tracing::info!("this host's KVM leaves SYSCALL from user mode at CPL3; repair armed");
        }
        let breakpoint_probe = crate::compat::breakpoints::probe(&kvm_sys)?;
        let exact_breakpoints = breakpoint_probe == BreakpointProbe::Exact;
        tracing::info!(
            "hardware breakpoints in guest kernel mode: {breakpoint_probe:?}{}",
            if exact_breakpoints {
                "; events at kicks in kernel mode are placed by breakpoint"
            } else {
                "; events at kicks are shipped as checkpoint deltas"
            }
        );
        // Host time flows on its own, so events get a bounded delay; under the `exits`
        // clock time only moves with exits and nothing is ever late.
        let kick = match clock.mode() {
            _ if replaying => Some(KickPurpose::StallWatch {
                limit_ns: crate::kicker::REPLAY_STALL_NS,
            }),
            ClockMode::Host => Some(KickPurpose::EventBound {
                bound_ns: crate::kicker::DEFAULT_EVENT_BOUND_NS,
            }),
            ClockMode::Exits { .. } => None,
        };
        let exit_ordinal = hooks.exit_ordinal.unwrap_or_default();
        let vm_fd = slots.vm.clone();
        let disk_backends = platform.disk_backends();
        let vcpu = VcpuHandle::spawn(VcpuParts {
            live_input: hooks.live_input,
            delta_request: hooks.delta_request,
            held_output: hooks.held_output,
            exit_ordinal: exit_ordinal.clone(),
            log,
            kick,
            boot_event_bound_ns,
            pause_request: pause_request.clone(),
            syscall_repair: (syscall_probe == SyscallProbe::Broken)
                .then(crate::compat::syscall::SyscallRepair::new),
            exact_breakpoints,
            fd: vcpu_fd,
            memory_slots: slots,
            memory: mem.clone(),
            platform,
            clock: clock.clone(),
            input_rx,
            trace,
            ordinal,
            halted,
            net_rx: net.as_ref().map(|n| n.rx.clone()),
        })?;
        Ok(Self {
            vcpu,
            pause_request,
            memory: mem,
            mem_mib,
            clock,
            syscall_probe,
            exit_ordinal,
            vm_fd,
            disks,
            disk_backends,
            net,
            _kvm: kvm_sys,
        })
    }
}
