//! Building a VM: KVM, guest memory, kernel, platform devices and the vCPU thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::boot::BootError;
use crate::clock::{ClockMode, VmClock};
use crate::compat::syscall::SyscallProbe;
use crate::compat::CompatError;
use crate::cpu::{self, CpuError};
use crate::disk::{DiskError, DiskRecord, DiskSpec};
use crate::memory::{MemoryError, MemorySlots};
use crate::net::host::NetHost;
use crate::net::{NetError, NetSpec};
use crate::platform::{ConsoleOut, PlatformError};
use crate::record::RecordError;
use crate::snapshot::{self, SnapshotError};
use crate::vcpu::{VcpuError, VcpuHandle};

mod from_kernel;
mod from_state;
mod setup;
mod start;

/// Wall-clock time (Unix seconds) that deterministic runs start at: 2026-01-01T00:00:00Z.
pub const DETERMINISTIC_EPOCH: u64 = 1_767_225_600;

/// What to boot a VM from a kernel with.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Path of the kernel image (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Path of the initrd, if any.
    pub initrd: Option<PathBuf>,
    /// The complete kernel command line, as the guest gets it.
    pub cmdline: String,
    /// Guest memory size, in MiB.
    pub mem_mib: u64,
    /// How guest time advances.
    pub clock: ClockMode,
    /// The event bound while the kernel boots (None: the live bound from the start; see
    /// `vcpu::boot_phase`).
    pub boot_event_bound_ns: Option<u64>,
    /// Give the kernel a random seed at boot (`SETUP_RNG_SEED`, logged when recording;
    /// never under the `exits` clock).
    pub boot_seed: bool,
    /// File to write a line per synchronous exit and injected interrupt to, if any.
    pub trace_exits: Option<PathBuf>,
    /// Disk images, each a virtio-blk function on a PCI bus (no disks and no NIC: no PCI
    /// bus at all).
    pub disks: Vec<DiskSpec>,
    /// A virtio-net function on a host TAP (a replayer takes its NIC from the log).
    pub net: Option<NetSpec>,
}

/// Why a VM could not be built, started or saved.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl on the VM or its vCPU failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done, as a verb phrase ("create a VM").
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be sized, created or registered.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel, initrd, command line or zero page could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The vCPU could not be set up to enter the kernel.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// The platform devices could not be built or restored.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The vCPU thread failed to start, pause, or save or load its state.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A host-compatibility probe or repair failed.
    #[error(transparent)]
    Compat(#[from] CompatError),
    /// A snapshot could not be saved or loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The recording log could not be started or written.
    #[error(transparent)]
    Record(RecordError),
    /// The log to replay could not be opened or does not begin as a log must.
    #[error("cannot replay: {0}")]
    Replay(String),
    /// A disk image could not be opened or does not match the snapshot's.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The NIC could not be set up: a bad `--net`, a MAC that differs from the saved one,
    /// or an unusable TAP.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The `--trace-exits` file could not be created.
    #[error("cannot create exit trace file {path}")]
    Trace {
        /// Path of the trace file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Whether the VM records its non-determinism to a log, replays one, or neither, as the
/// byte stream the log goes to or comes from. The VM's builders open it into the vCPU's
/// [`crate::vcpu::LogMode`] (a recorder or a replayer) once the VM exists: a recorder needs the VM for
/// its dirty-page log.
pub enum LogStream {
    /// No log: the VM neither records nor replays.
    Off,
    /// Record, encoding delta pages as said.
    Record(Box<dyn std::io::Write + Send>, ft_log::pages::PageEncoding),
    /// Replay the log read from this stream.
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
    /// The console under the output rule, for the output held at a full checkpoint.
    pub held_output: Option<Arc<crate::ft::console::ConsoleSink>>,
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
    /// The primary: it reads its TAP from the start.
    Primary,
    /// The backup: it reads its TAP only once it goes live.
    Backup,
}

/// What a VM is connected to, however it starts (a kernel, a snapshot, a transferred
/// state): its console, serial input, pause flag, log and fault-tolerance hooks.
pub struct VmIo {
    /// Where the guest's serial output goes.
    pub console: ConsoleOut,
    /// Bytes for the guest's serial input, if it has any (a replayer takes its input from
    /// the log instead).
    pub input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>,
    /// Setting this pauses the vCPU at its next synchronous exit.
    pub pause_request: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the VM records, replays or neither.
    pub log: LogStream,
    /// What a fault-tolerant role adds (nothing by default).
    pub hooks: FtHooks,
}

impl VmIo {
    /// A console and a pause flag; no input, no log, no fault-tolerant role.
    pub fn new(console: ConsoleOut, pause_request: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self {
            console,
            input_rx: None,
            pause_request,
            log: LogStream::Off,
            hooks: FtHooks::default(),
        }
    }

    /// With this serial input.
    pub fn input(mut self, input_rx: Option<crossbeam_channel::Receiver<Vec<u8>>>) -> Self {
        self.input_rx = input_rx;
        self
    }

    /// With this log.
    pub fn log(mut self, log: LogStream) -> Self {
        self.log = log;
        self
    }

    /// With these fault-tolerance hooks.
    pub fn hooks(mut self, hooks: FtHooks) -> Self {
        self.hooks = hooks;
        self
    }
}

/// The host resources of a VM continued from a saved state.
pub struct Resources<'a> {
    /// File to write a line per synchronous exit and injected interrupt to, if any.
    pub trace_exits: Option<&'a Path>,
    /// The disk images for the saved machine's virtio-blk functions, in order (for a
    /// snapshot: copies to use instead of the recorded images, or none).
    pub disks: Vec<DiskSpec>,
    /// The TAP for the saved machine's NIC (it may be another than the one it had).
    pub net: Option<NetSpec>,
}

/// A running (or paused) VM.
pub struct Vm {
    /// Control of the vCPU thread.
    pub vcpu: VcpuHandle,
    /// Setting this pauses the vCPU at its next synchronous exit.
    pub pause_request: Arc<std::sync::atomic::AtomicBool>,
    /// Guest memory, as mapped in this process.
    pub memory: GuestMemoryMmap,
    /// The guest's virtual time.
    pub clock: Arc<VmClock>,
    /// Guest memory size, in MiB.
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
