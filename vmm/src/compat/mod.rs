//! Repairs for hosts whose KVM cannot run a stock guest unaided (see shared/HOST-KVM.md:
//! a nested PVM module that emulates guest kernel mode). Each repair is triggered only by
//! the failure it repairs, so on a host with hardware virtualization none of them ever
//! runs; each is counted and reported at exit.
//!
//! - INT3 / INT n at CPL0 fail to emulate (KVM_EXIT_INTERNAL_ERROR, emulation): step RIP
//!   past the instruction and inject the exception as the CPU would have raised it.
//! - FWAIT fails to emulate: with no pending x87 exception it does nothing, so skip it.
//! - SYSCALL from CPL3 leaves CS at the user selector: see [`syscall`].
//! - A shadow MMU does not see guest memory the VMM rewrote: see [`shadow_mmu`] (done on
//!   every host, since none can be told apart cheaply; harmless with EPT/NPT).

pub mod breakpoints;
pub mod probe_vm;
pub mod shadow_mmu;
pub mod syscall;

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// KVM_INTERNAL_ERROR_EMULATION: the instruction emulator gave up.
pub const SUBERROR_EMULATION: u32 = 1;

/// Why a host-compatibility repair could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// A KVM ioctl the repair needed failed.
    #[error("cannot {what} (host-compatibility repair)")]
    Kvm {
        /// What the repair was doing, as a verb phrase ("read registers").
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be registered with KVM again after its slots were removed.
    #[error("cannot register guest memory again (host-compatibility repair)")]
    Slots(#[from] crate::memory::MemoryError),
}

pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CompatError {
    move |source| CompatError::Kvm { what, source }
}

/// How often each repair ran.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CompatCounts {
    /// INT3 instructions stepped over with #BP injected in their place.
    pub int3: u64,
    /// INT n instructions (n other than 3) stepped over with their vector injected.
    pub int_n: u64,
    /// FWAIT instructions skipped.
    pub fwait: u64,
    /// SYSCALLs from CPL3 completed by hand ([`syscall`]).
    pub syscall: u64,
    /// Memory slots reloaded after the VMM rewrote guest memory ([`shadow_mmu`]).
    pub slot_reloads: u64,
}

impl CompatCounts {
    /// Repairs of failed instructions (all but the slot reloads).
    pub fn total(&self) -> u64 {
        self.int3 + self.int_n + self.fwait + self.syscall
    }
}

impl std::fmt::Display for CompatCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "int3 {}, int n {}, fwait {}, syscall {}, slot reloads {}",
            self.int3, self.int_n, self.fwait, self.syscall, self.slot_reloads
        )
    }
}

/// A repair that was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// A #BP (or other software exception) is now queued for the next entry.
    InjectedException(u8),
    /// The instruction was skipped.
    Skipped,
}

/// Up to 16 bytes of the instruction at the vCPU's RIP, read through the guest's own
/// page tables. Fewer when RIP is near the end of a mapping.
fn instruction_bytes(fd: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16);
    let mut addr = rip;
    while bytes.len() < 16 {
        let Ok(t) = fd.translate_gva(addr) else { break };
        if t.valid == 0 {
            break;
        }
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(16 - bytes.len());
        let mut buf = vec![0u8; n];
        if mem
            .read_slice(&mut buf, GuestAddress(t.physical_address))
            .is_err()
        {
            break;
        }
        bytes.extend_from_slice(&buf);
        addr = addr.wrapping_add(n as u64);
    }
    bytes
}

/// Try to repair an emulation failure at the current RIP. `Ok(None)` means this is not a
/// failure ftvm knows how to repair; the caller stops the VM and reports it.
pub fn repair_emulation_failure(
    fd: &VcpuFd,
    mem: &GuestMemoryMmap,
    counts: &mut CompatCounts,
) -> Result<Option<Repair>, CompatError> {
    let mut regs = fd.get_regs().map_err(kvm("read registers"))?;
    let insn = instruction_bytes(fd, mem, regs.rip);
    let (len, action) = match insn.as_slice() {
        [0xcc, ..] => (1, Some(3u8)),
        [0xcd, vector, ..] => (2, Some(*vector)),
        [0x9b, ..] => (1, None),
        _ => return Ok(None),
    };
    regs.rip = regs.rip.wrapping_add(len);
    fd.set_regs(&regs).map_err(kvm("advance RIP"))?;
    match action {
        Some(vector) => {
            // A trap: the exception frame points after the instruction, as on hardware.
            let mut events = fd.get_vcpu_events().map_err(kvm("read pending events"))?;
            events.exception.injected = 1;
            events.exception.nr = vector;
            events.exception.has_error_code = 0;
            events.exception.error_code = 0;
            fd.set_vcpu_events(&events)
                .map_err(kvm("inject the exception"))?;
            if vector == 3 {
                counts.int3 += 1;
            } else {
                counts.int_n += 1;
            }
            Ok(Some(Repair::InjectedException(vector)))
        }
        None => {
            counts.fwait += 1;
            Ok(Some(Repair::Skipped))
        }
    }
}
