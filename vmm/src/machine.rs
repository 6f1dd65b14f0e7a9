//! Building a VM: KVM, guest memory, kernel, platform devices and the vCPU thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryMmap};

use crate::boot::{self, BootError};
use crate::clock::{ClockMode, VmClock};
use crate::compat::syscall::SyscallProbe;
use crate::compat::CompatError;
use crate::cpu::{self, CpuError};
use crate::disk::{open_disks, snapshot_disks, DiskError, DiskRecord, DiskSpec};
use crate::memory::{self, MemoryError, MemorySlots};
use crate::net::host::{self as nic_host, NetHost};
use crate::net::{NetError, NetSpec};
use crate::platform::{ConsoleOut, Platform, PlatformError};
use crate::record::RecordError;
use crate::snapshot::{self, SnapshotError};
use crate::vcpu::{LogMode, VcpuError, VcpuHandle, VcpuParts};

mod setup;
use setup::{attach_nic, is_replay, log_start, open_log, open_tap, open_trace, pci_setup};

/// Wall-clock time (Unix seconds) that deterministic runs start at: 2026-01-01T00:00:00Z.
pub const DETERMINISTIC_EPOCH: u64 = 1_767_225_600;

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub clock: ClockMode,
    pub trace_exits: Option<PathBuf>,
    /// Disk images, each a virtio-blk function on a PCI bus (no disks and no NIC: no PCI
    /// bus at all).
    pub disks: Vec<DiskSpec>,
    /// A virtio-net function on a host TAP (a replayer takes its NIC from the log).
    pub net: Option<NetSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Compat(#[from] CompatError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Record(RecordError),
    #[error("cannot replay: {0}")]
    Replay(String),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot create exit trace file {path}")]
    Trace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Whether the VM records its non-determinism to a log, replays one, or neither, as the
/// byte stream the log goes to or comes from. The VM's builders open it into the vCPU's
/// [`LogMode`] (a recorder or a replayer) once the VM exists: a recorder needs the VM for
/// its dirty-page log.
pub enum LogStream {
    Off,
    /// Record, encoding delta pages as said.
    Record(Box<dyn std::io::Write + Send>, ft_log::pages::PageEncoding),
    Replay(Box<dyn std::io::Read + Send>),
    /// A backup following its primary's live log, publishing what it has verified.
    LiveReplay(
        Box<dyn std::io::Read + Send>,
        Arc<crate::counters::LiveCounters>,
    ),
}

/// What the fault-tolerant roles add to a VM (all off for `run`, `record`, `replay`).
#[derive(Default)]
pub struct FtHooks {
    /// Track dirty pages from the start (state transfer, later checkpoint deltas).
    pub dirty_log: bool,
    /// Serial input for a backup once it goes live.
    pub live_input: Option<crossbeam_channel::Receiver<Vec<u8>>>,
    /// Set to ask the recording vCPU for a checkpoint delta at its next exit.
    pub delta_request: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Where the vCPU publishes its exit ordinal (for the output rule).
    pub exit_ordinal: Option<Arc<AtomicU64>>,
    /// Where the platform keeps the guest's console position (for the output rule).
    pub console_position: Option<Arc<AtomicU64>>,
    /// A pair member's NIC: its frames under the output rule, and (a backup) reading
    /// its TAP only once live.
    pub pair_nic: Option<PairNicRole>,
}

/// Which side of a pair a NIC is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairNicRole {
    Primary,
    Backup,
}

/// What a restored VM is connected to.
pub struct Resources<'a> {
    pub console: ConsoleOut,
    pub input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>,
    pub trace_exits: Option<&'a Path>,
    pub pause_request: Arc<std::sync::atomic::AtomicBool>,
    /// The disk images for the saved machine's virtio-blk functions, in order.
    pub disks: Vec<DiskSpec>,
    /// The TAP for the saved machine's NIC (it may be another than the one it had).
    pub net: Option<NetSpec>,
}

/// A running (or paused) VM.
pub struct Vm {
    pub vcpu: VcpuHandle,
    /// Setting this pauses the vCPU at its next synchronous exit.
    pub pause_request: Arc<std::sync::atomic::AtomicBool>,
    pub memory: GuestMemoryMmap,
    pub clock: Arc<VmClock>,
    pub mem_mib: u64,
    /// Whether this host needed the SYSCALL-from-user repair.
    pub syscall_probe: SyscallProbe,
    /// The vCPU's last exit ordinal (see FtHooks::exit_ordinal).
    pub exit_ordinal: Arc<AtomicU64>,
    /// The VM (dirty page log for state transfer); kept alive while the vCPU runs.
    pub vm_fd: Arc<VmFd>,
    /// Its disk images (recorded in snapshots).
    pub disks: Vec<DiskSpec>,
    /// The same images as the devices use them (state transfer reads them).
    pub disk_backends: Vec<crate::disk::FileBackend>,
    /// The host side of its NIC, under `run` and `record`.
    pub net: Option<NetHost>,
    _kvm: Kvm,
}

/// A KVM VM with `mem` mapped and its one vCPU, with the normalised CPUID.
fn create_vm(
    kvm_sys: &Kvm,
    mem: &GuestMemoryMmap,
    dirty_log: bool,
) -> Result<(MemorySlots, kvm_ioctls::VcpuFd), VmError> {
    let vm_fd = kvm_sys.create_vm().map_err(kvm("create a VM"))?;
    vm_fd
        .set_tss_address(0xfffb_d000)
        .map_err(kvm("place the TSS"))?;
    let slots = MemorySlots {
        vm: Arc::new(vm_fd),
        dirty_log,
    };
    slots.register(mem)?;
    let vcpu_fd = slots.vm.create_vcpu(0).map_err(kvm("create the vCPU"))?;
    vcpu_fd
        .set_cpuid2(&cpu::normalised_cpuid(kvm_sys)?)
        .map_err(kvm("set CPUID"))?;
    Ok((slots, vcpu_fd))
}

impl Vm {
    /// Create a VM, load the kernel and start the vCPU thread, paused.
    pub fn boot(
        config: &VmConfig,
        console: ConsoleOut,
        input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>,
        pause_request: Arc<std::sync::atomic::AtomicBool>,
        log: LogStream,
    ) -> Result<Self, VmError> {
        Self::boot_with(
            config,
            console,
            input_rx,
            pause_request,
            log,
            FtHooks::default(),
        )
    }

    /// `boot`, with the hooks of a fault-tolerant role.
    pub fn boot_with(
        config: &VmConfig,
        console: ConsoleOut,
        input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>,
        pause_request: Arc<std::sync::atomic::AtomicBool>,
        log: LogStream,
        mut hooks: FtHooks,
    ) -> Result<Self, VmError> {
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
        boot::write_zero_page(&mem, header, initrd, config.cmdline.len())?;
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
        let (wall, logged_nic) = log_start(&mut log, now, configured_nic)?;
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
            pause_request,
            log,
            hooks,
            config.disks.clone(),
            net,
        )
    }

    /// Continue a VM from the snapshot in `dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        dir: &Path,
        console: ConsoleOut,
        input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>,
        trace_exits: Option<&Path>,
        pause_request: Arc<std::sync::atomic::AtomicBool>,
        log: LogStream,
        disks: &[DiskSpec],
        net: Option<NetSpec>,
    ) -> Result<Self, VmError> {
        Self::restore_with(
            dir,
            console,
            input_rx,
            trace_exits,
            pause_request,
            log,
            FtHooks::default(),
            disks,
            net,
        )
    }

    /// `restore`, with the hooks of a fault-tolerant role.
    #[allow(clippy::too_many_arguments)]
    pub fn restore_with(
        dir: &Path,
        console: ConsoleOut,
        input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>,
        trace_exits: Option<&Path>,
        pause_request: Arc<std::sync::atomic::AtomicBool>,
        log: LogStream,
        hooks: FtHooks,
        disks: &[DiskSpec],
        net: Option<NetSpec>,
    ) -> Result<Self, VmError> {
        let loaded = snapshot::load(dir)?;
        let disks = snapshot_disks(&loaded.manifest.disks, disks)?;
        tracing::info!(snapshot = %dir.display(), "snapshot loaded");
        Self::from_state(
            loaded.memory,
            loaded.state,
            loaded.manifest.mem_mib,
            loaded.manifest.clock,
            Resources {
                console,
                input_rx,
                trace_exits,
                pause_request,
                disks,
                net,
            },
            log,
            hooks,
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
        log: LogStream,
        mut hooks: FtHooks,
    ) -> Result<Self, VmError> {
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
        let (_, logged_nic) =
            log_start(&mut log, state.platform.cmos.base_unix_secs, restored_nic)?;
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
            res.console,
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
            res.input_rx,
            trace,
            (state.vcpu.ordinal, state.vcpu.halted),
            res.pause_request,
            log,
            hooks,
            res.disks,
            net,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
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
        // Host time flows on its own, so events get a bounded delay; under the `exits`
        // clock time only moves with exits and nothing is ever late.
        let event_bound_ns = match clock.mode() {
            _ if replaying => Some(crate::kicker::REPLAY_STALL_NS),
            ClockMode::Host => Some(crate::kicker::DEFAULT_EVENT_BOUND_NS),
            ClockMode::Exits { .. } => None,
        };
        let exit_ordinal = hooks.exit_ordinal.unwrap_or_default();
        let vm_fd = slots.vm.clone();
        let disk_backends = platform.disk_backends();
        let vcpu = VcpuHandle::spawn(VcpuParts {
            live_input: hooks.live_input,
            delta_request: hooks.delta_request,
            exit_ordinal: exit_ordinal.clone(),
            log,
            event_bound_ns,
            pause_request: pause_request.clone(),
            syscall_repair: (syscall_probe == SyscallProbe::Broken)
                .then(crate::compat::syscall::SyscallRepair::new),
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

    /// Pause the VM and save it to `dir`; it stays paused.
    pub fn snapshot(&self, dir: &Path) -> Result<snapshot::Manifest, VmError> {
        self.vcpu.pause(std::time::Duration::from_secs(10))?;
        let state = self.vcpu.save_state()?;
        // The VM is paused: its disks are quiet (writes are synchronous, at exits).
        let disks = self
            .disks
            .iter()
            .map(DiskRecord::of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(snapshot::save(
            dir,
            &state,
            &self.memory,
            self.mem_mib,
            self.clock.mode(),
            disks,
        )?)
    }
}
