//! Why a VM stopped, as reported to the user, and the process exit status for it.

use std::fmt;

/// Why the vCPU stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum StopReason {
    /// The guest wrote to the system controller's power-off register.
    PowerOff {
        /// The exit status the guest wrote.
        status: u32,
    },
    /// The guest asked the keyboard controller for a CPU reset (how Linux reboots with
    /// `reboot=k`, and how tiny guests end).
    Reset,
    /// Three nested faults: the CPU shut down.
    TripleFault {
        /// The guest's RIP at the shutdown.
        rip: u64,
    },
    /// HLT with interrupts disabled, or with nothing left that could ever wake it.
    HaltedForever {
        /// The guest's RIP at the halt.
        rip: u64,
    },
    /// A port or address with no device behind it.
    UnknownIo {
        /// The access: read or write, size, value written, port or address.
        what: String,
        /// The guest's RIP at the access.
        rip: u64,
        /// Ordinal the access would have had as a synchronous exit.
        ordinal: u64,
    },
    /// KVM could not emulate an instruction.
    EmulationFailure {
        /// KVM's internal-error suberror (1: the emulator gave up).
        suberror: u32,
        /// The guest's RIP at the instruction.
        rip: u64,
        /// The extra data KVM reported with the error.
        data: Vec<u64>,
    },
    /// KVM_RUN could not enter the guest (an invalid guest state, for example).
    EntryFailure {
        /// The hardware's entry-failure reason.
        reason: u64,
    },
    /// KVM returned an exit ftvm does not handle (described).
    UnexpectedExit(String),
    /// A KVM ioctl failed while the vCPU ran (the error, described).
    Kvm(String),
    /// The VMM was told to stop (signal, Finish command), or a replay reached the end of
    /// its log.
    Finished,
    /// A log could not be written, or a replayed log is corrupt or ends early.
    Log(String),
    /// ftvm itself failed (the vCPU thread panicked, for example).
    VmmBug(String),
}

impl StopReason {
    /// Process exit status: 0 when the guest ended itself normally, the guest's own
    /// status for a power-off, 2 when the guest crashed, 3 when the VMM failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::PowerOff { status } => (*status).min(255) as i32,
            StopReason::Reset | StopReason::Finished => 0,
            StopReason::TripleFault { .. }
            | StopReason::HaltedForever { .. }
            | StopReason::UnknownIo { .. }
            | StopReason::EmulationFailure { .. } => 2,
            StopReason::EntryFailure { .. }
            | StopReason::Log(_)
            | StopReason::UnexpectedExit(_)
            | StopReason::Kvm(_)
            | StopReason::VmmBug(_) => 3,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::PowerOff { status } => write!(f, "guest powered off with status {status}"),
            StopReason::Reset => write!(f, "guest requested a reset"),
            StopReason::TripleFault { rip } => write!(f, "guest triple-faulted (CPU shutdown) at rip {rip:#x}"),
            StopReason::HaltedForever { rip } => write!(f, "guest halted at rip {rip:#x} with nothing that can wake it"),
            StopReason::UnknownIo { what, rip, ordinal } => write!(
                f,
                "guest accessed a port or address with no device: {what} at rip {rip:#x} (exit {ordinal})"
            ),
            StopReason::EmulationFailure { suberror, rip, data } => write!(
                f,
                "KVM could not emulate the instruction at rip {rip:#x} (suberror {suberror}, data {data:x?})"
            ),
            StopReason::EntryFailure { reason } => write!(f, "KVM could not enter the guest (hardware reason {reason:#x})"),
            StopReason::UnexpectedExit(e) => write!(f, "unexpected VM exit {e}"),
            StopReason::Kvm(e) => write!(f, "{e}"),
            StopReason::Finished => write!(f, "stopped by the VMM"),
            StopReason::Log(e) => write!(f, "log: {e}"),
            StopReason::VmmBug(e) => write!(f, "internal error: {e}"),
        }
    }
}
