//! The SYSCALL-from-user repair (HOST-KVM.md item 4).
//!
//! On some hosts SYSCALL executed at CPL3 loads RIP = LSTAR, RCX, R11 and masks RFLAGS but
//! leaves CS/SS at the user selectors, so the kernel's entry code is fetched at CPL3 and
//! page-faults (the entry page is supervisor-only). The repair watches the guest's #PF
//! handler with a hardware breakpoint (exact at CPL0); when the fault frame shows RIP ==
//! LSTAR taken from CPL3, it discards the frame and completes the SYSCALL: kernel CS/SS
//! from MSR_STAR, RSP and RFLAGS as they were at the SYSCALL. Any other page fault is
//! stepped over (breakpoint off, one single-step, breakpoint on). This costs two debug
//! exits per guest page fault, so it is armed only on hosts where a probe VM shows the bug.

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::breakpoints::{Breakpoints, Slot};
use super::probe_vm;
use super::{kvm, CompatError};

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
/// Re-read the guest's IDT for its #PF handler every this many synchronous exits (the
/// kernel installs its final IDT once, early in boot).
const IDT_CHECK_INTERVAL: u64 = 512;

/// What a probe VM showed about SYSCALL from CPL3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallProbe {
    /// SYSCALL reached LSTAR at CPL0: no repair needed.
    Works,
    /// SYSCALL reached LSTAR at CPL3: the repair is needed.
    Broken,
}

/// Run a two-page probe VM: user code `syscall` at CPL3, LSTAR pointing at `hlt`. A HLT
/// exit means the CPU reached the kernel entry at CPL0; on the broken hosts the `hlt` runs
/// at CPL3, faults with no IDT and the VM shuts down.
pub fn probe(kvm_sys: &Kvm) -> Result<SyscallProbe, CompatError> {
    let mut probe = probe_vm::build(
        kvm_sys,
        &[0x0f, 0x05], // syscall
        &[0xf4],       // hlt
        3,
    )?;
    let vcpu = &mut probe.vcpu;
    let msrs = kvm_bindings::Msrs::from_entries(&[
        kvm_bindings::kvm_msr_entry {
            index: MSR_STAR,
            data: (0x20u64 << 48) | (0x08u64 << 32),
            ..Default::default()
        },
        kvm_bindings::kvm_msr_entry {
            index: MSR_LSTAR,
            data: probe_vm::CODE2,
            ..Default::default()
        },
    ])
    .map_err(|_| CompatError::Kvm {
        what: "build the probe MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vcpu.set_msrs(&msrs).map_err(kvm("set probe MSRs"))?;
    for _ in 0..16 {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => return Ok(SyscallProbe::Works),
            Ok(VcpuExit::Intr) => continue,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Ok(other) => {
                tracing::debug!(exit = ?other, "SYSCALL probe did not reach CPL0");
                return Ok(SyscallProbe::Broken);
            }
            Err(e) => {
                return Err(CompatError::Kvm {
                    what: "run the probe VM",
                    source: e,
                })
            }
        }
    }
    Ok(SyscallProbe::Broken)
}

/// Where the repair stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Breakpoint on the #PF handler at this address.
    Armed(u64),
    /// Stepping over the first instruction of the handler.
    Stepping(u64),
    /// No #PF handler known yet.
    Idle,
}

/// The repair's state in the vCPU thread.
#[derive(Debug)]
pub struct SyscallRepair {
    phase: Phase,
    next_idt_check: u64,
}

/// Read `N` u64 words at guest virtual address `gva`.
fn read_words<const N: usize>(fd: &VcpuFd, mem: &GuestMemoryMmap, gva: u64) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    for (i, word) in out.iter_mut().enumerate() {
        let addr = gva.checked_add(8 * i as u64)?;
        let t = fd.translate_gva(addr).ok()?;
        if t.valid == 0 {
            return None;
        }
        *word = mem.read_obj(GuestAddress(t.physical_address)).ok()?;
    }
    Some(out)
}

fn read_msr(fd: &VcpuFd, index: u32) -> Result<u64, CompatError> {
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .map_err(|_| CompatError::Kvm {
        what: "build an MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    fd.get_msrs(&mut msrs).map_err(kvm("read an MSR"))?;
    Ok(msrs.as_slice()[0].data)
}

impl Default for SyscallRepair {
    fn default() -> Self {
        Self::new()
    }
}

impl SyscallRepair {
    /// A repair that is idle until it first finds the guest's #PF handler.
    pub fn new() -> Self {
        Self {
            phase: Phase::Idle,
            next_idt_check: 0,
        }
    }

    /// The guest's #PF handler, from vector 14 of its IDT.
    fn pf_handler(fd: &VcpuFd, mem: &GuestMemoryMmap) -> Result<Option<u64>, CompatError> {
        let sregs = fd.get_sregs().map_err(kvm("read special registers"))?;
        if sregs.idt.limit < 14 * 16 + 15 || sregs.cr0 & 0x8000_0000 == 0 {
            return Ok(None);
        }
        let Some([low, high]) = read_words::<2>(fd, mem, sregs.idt.base + 14 * 16) else {
            return Ok(None);
        };
        if low & (1 << 47) == 0 {
            return Ok(None); // gate not present
        }
        let offset = (low & 0xffff) | ((low >> 32) & 0xffff_0000) | ((high & 0xffff_ffff) << 32);
        Ok(Some(offset))
    }

    /// At a synchronous exit: keep the breakpoint on the guest's current #PF handler.
    pub fn on_sync_exit(
        &mut self,
        fd: &VcpuFd,
        mem: &GuestMemoryMmap,
        ordinal: u64,
        bps: &mut Breakpoints,
    ) -> Result<(), CompatError> {
        if ordinal < self.next_idt_check || matches!(self.phase, Phase::Stepping(_)) {
            return Ok(());
        }
        self.next_idt_check = ordinal + IDT_CHECK_INTERVAL;
        self.follow_handler(fd, mem, bps)
    }

    /// Put the breakpoint on the guest's #PF handler as its IDT says now (or take it off
    /// if the guest has none).
    fn follow_handler(
        &mut self,
        fd: &VcpuFd,
        mem: &GuestMemoryMmap,
        bps: &mut Breakpoints,
    ) -> Result<(), CompatError> {
        let handler = Self::pf_handler(fd, mem)?;
        match (handler, self.phase) {
            (Some(h), Phase::Armed(a)) if h == a => {}
            (Some(h), _) => {
                bps.set(fd, Slot::PageFault, Some(h))?;
                self.phase = Phase::Armed(h);
            }
            (None, Phase::Armed(_)) => {
                bps.set(fd, Slot::PageFault, None)?;
                self.phase = Phase::Idle;
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// The vCPU's whole state was just loaded (a restore or state transfer before the
    /// thread's first run, a checkpoint): the breakpoint goes on the loaded guest's #PF
    /// handler before it runs another instruction. Waiting for the next synchronous exit
    /// left a window in which a SYSCALL from user mode faulted unrepaired (a replayed
    /// shell killed with a segfault at the kernel's entry). A step over a fault of the old
    /// state means nothing in the new one, and the debug registers just loaded may have
    /// replaced the host's breakpoint, so both are set again. A guest whose IDT is not set
    /// up yet (a boot) is looked at again at its first synchronous exit, as before.
    pub fn after_state_load(
        &mut self,
        fd: &VcpuFd,
        mem: &GuestMemoryMmap,
        ordinal: u64,
        bps: &mut Breakpoints,
    ) -> Result<(), CompatError> {
        if let Phase::Stepping(h) = self.phase {
            // Ending the step sends the breakpoints to KVM as well.
            self.phase = Phase::Armed(h);
            bps.end_step(fd)?;
        } else {
            bps.reapply(fd)?;
        }
        self.follow_handler(fd, mem, bps)?;
        self.next_idt_check = match self.phase {
            Phase::Idle => 0,
            _ => ordinal + IDT_CHECK_INTERVAL,
        };
        Ok(())
    }

    /// A debug exit of the repair's (its breakpoint, or the step over it). Returns true
    /// when it completed a broken SYSCALL.
    pub fn on_debug_exit(
        &mut self,
        fd: &VcpuFd,
        mem: &GuestMemoryMmap,
        pc: u64,
        bps: &mut Breakpoints,
    ) -> Result<bool, CompatError> {
        match self.phase {
            Phase::Stepping(h) => {
                bps.end_step(fd)?;
                self.phase = Phase::Armed(h);
                Ok(false)
            }
            Phase::Armed(h) if pc == h => {
                let regs = fd.get_regs().map_err(kvm("read registers"))?;
                let lstar = read_msr(fd, MSR_LSTAR)?;
                // The #PF frame: error code, RIP, CS, RFLAGS, RSP, SS.
                let frame = read_words::<6>(fd, mem, regs.rsp);
                match frame {
                    Some([_, rip, cs, rflags, rsp, _]) if rip == lstar && cs & 3 == 3 => {
                        self.complete_syscall(fd, lstar, rflags, rsp)?;
                        Ok(true)
                    }
                    _ => {
                        bps.step(fd, Slot::PageFault)?;
                        self.phase = Phase::Stepping(h);
                        Ok(false)
                    }
                }
            }
            // A breakpoint or step we did not set up: nothing to do but continue.
            _ => Ok(false),
        }
    }

    fn complete_syscall(
        &mut self,
        fd: &VcpuFd,
        lstar: u64,
        rflags: u64,
        rsp: u64,
    ) -> Result<(), CompatError> {
        let star = read_msr(fd, MSR_STAR)?;
        let kernel_cs = ((star >> 32) & 0xfffc) as u16;
        let mut regs = fd.get_regs().map_err(kvm("read registers"))?;
        regs.rip = lstar;
        regs.rsp = rsp;
        regs.rflags = rflags;
        fd.set_regs(&regs).map_err(kvm("complete SYSCALL"))?;
        let mut sregs = fd.get_sregs().map_err(kvm("read special registers"))?;
        sregs.cs = probe_vm::flat_segment(kernel_cs, 0xb, 0, 1, 0);
        sregs.ss = probe_vm::flat_segment(kernel_cs + 8, 0x3, 0, 0, 1);
        fd.set_sregs(&sregs).map_err(kvm("complete SYSCALL"))?;
        Ok(())
    }
}
