//! The vCPU's hardware breakpoints, and whether this host's are exact in guest kernel
//! mode (HOST-KVM.md: they fire at CPL0 before the instruction, re-hit until disabled, and
//! never fire at CPL3).
//!
//! Two users share the debug registers: the SYSCALL repair (its breakpoint on the guest's
//! #PF handler, see [`super::syscall`]) and a replay's search for a recorded event point
//! (`vcpu/points.rs`). KVM_SET_GUEST_DEBUG sets every register at once, so both go
//! through one [`Breakpoints`], which also steps one instruction over a hit with every
//! breakpoint off and re-arms them after it.

use kvm_bindings::{
    kvm_guest_debug, kvm_guest_debug_arch, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use super::{kvm, probe_vm, CompatError};

/// Who a breakpoint belongs to (its debug register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The SYSCALL repair's, on the guest's #PF handler (DR0).
    PageFault = 0,
    /// A replay's search for a recorded event point (DR1).
    EventPoint = 1,
}

/// The debug registers as KVM is to be told: `(control, debugreg)`. Pure, for the tests.
pub fn debug_state(addrs: [Option<u64>; 2], stepping: bool) -> (u32, [u64; 8]) {
    let mut debugreg = [0u64; 8];
    if stepping {
        // A breakpoint at the instruction being stepped would fire again before it runs.
        return (KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, debugreg);
    }
    let mut dr7 = 0u64;
    for (i, addr) in addrs.iter().enumerate() {
        if let Some(a) = addr {
            debugreg[i] = *a;
            dr7 |= 1 << (2 * i); // Li: enabled; R/W and LEN 0: execute, one byte
        }
    }
    if dr7 == 0 {
        return (0, debugreg);
    }
    debugreg[7] = dr7;
    (KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, debugreg)
}

/// The vCPU's breakpoints and single-step, as last set in KVM.
#[derive(Debug, Default)]
pub struct Breakpoints {
    addrs: [Option<u64>; 2],
    /// Stepping one instruction with every breakpoint off, for this slot's owner.
    stepping: Option<Slot>,
    /// What KVM was last told (None: never), so unchanged states cost no ioctl.
    applied: Option<(u32, [u64; 8])>,
}

impl Breakpoints {
    /// Put `slot`'s breakpoint at `addr` (None: remove it).
    pub fn set(&mut self, fd: &VcpuFd, slot: Slot, addr: Option<u64>) -> Result<(), CompatError> {
        self.addrs[slot as usize] = addr;
        self.apply(fd)
    }

    /// Where `slot`'s breakpoint is.
    pub fn get(&self, slot: Slot) -> Option<u64> {
        self.addrs[slot as usize]
    }

    /// Step one instruction for `slot`'s owner with every breakpoint off; the next debug
    /// exit is the step's, and [`Breakpoints::end_step`] re-arms them.
    pub fn step(&mut self, fd: &VcpuFd, slot: Slot) -> Result<(), CompatError> {
        self.stepping = Some(slot);
        self.apply(fd)
    }

    /// Whose step is under way.
    pub fn stepping(&self) -> Option<Slot> {
        self.stepping
    }

    /// After a step's debug exit: the breakpoints back on.
    pub fn end_step(&mut self, fd: &VcpuFd) -> Result<(), CompatError> {
        self.stepping = None;
        self.apply(fd)
    }

    /// Whose breakpoint is at `pc`, if any (the SYSCALL repair's first).
    pub fn owner_at(&self, pc: u64) -> Option<Slot> {
        [Slot::PageFault, Slot::EventPoint]
            .into_iter()
            .find(|s| self.addrs[*s as usize] == Some(pc))
    }

    /// Tell KVM again even if nothing changed here (after a vCPU state load, which may
    /// have replaced what the host had); nothing is sent while no breakpoint was ever set.
    pub fn reapply(&mut self, fd: &VcpuFd) -> Result<(), CompatError> {
        if self.applied.take().is_none() {
            return Ok(());
        }
        self.apply(fd)
    }

    fn apply(&mut self, fd: &VcpuFd) -> Result<(), CompatError> {
        let state = debug_state(self.addrs, self.stepping.is_some());
        if self.applied == Some(state) {
            return Ok(());
        }
        let dbg = kvm_guest_debug {
            control: state.0,
            pad: 0,
            arch: kvm_guest_debug_arch { debugreg: state.1 },
        };
        fd.set_guest_debug(&dbg)
            .map_err(kvm("set guest debugging"))?;
        self.applied = Some(state);
        Ok(())
    }
}

/// What a probe VM showed about hardware breakpoints in guest kernel mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointProbe {
    /// Each pass of a loop hit the breakpoint once, before the instruction, with the
    /// loop's own register values: events can be placed by breakpoint.
    Exact,
    /// They did not: events between exits are shipped as checkpoint deltas.
    NotExact,
}

/// Run a probe VM at CPL0: `mov ecx, 5; 1: dec ecx; jnz 1b; hlt` with a breakpoint on
/// the `dec`. Exact breakpoints stop there five times, with RCX 5, 4, 3, 2, 1 (each hit
/// stepped over with the breakpoint off, then re-armed), and the VM then halts.
pub fn probe(kvm_sys: &Kvm) -> Result<BreakpointProbe, CompatError> {
    const LOOP: u64 = probe_vm::CODE + 5;
    let code = [0xb9, 5, 0, 0, 0, 0xff, 0xc9, 0x75, 0xfc, 0xf4];
    let mut vm = probe_vm::build(kvm_sys, &code, &[0xf4], 0)?;
    let fd = &mut vm.vcpu;
    let mut bps = Breakpoints::default();
    bps.set(fd, Slot::EventPoint, Some(LOOP))?;
    let mut seen = Vec::new();
    for _ in 0..64 {
        let exit = match fd.run() {
            Ok(VcpuExit::Debug(arch)) => Some(arch.pc),
            Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Intr) => continue,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Ok(other) => {
                tracing::debug!(exit = ?other, "breakpoint probe ended unexpectedly");
                return Ok(BreakpointProbe::NotExact);
            }
            Err(e) => {
                tracing::debug!("breakpoint probe failed: {e}");
                return Ok(BreakpointProbe::NotExact);
            }
        };
        let Some(pc) = exit else {
            let exact = seen == [5, 4, 3, 2, 1];
            tracing::debug!(?seen, "breakpoint probe: RCX at each hit");
            return Ok(if exact {
                BreakpointProbe::Exact
            } else {
                BreakpointProbe::NotExact
            });
        };
        if bps.stepping().is_some() {
            bps.end_step(fd)?;
            continue;
        }
        if pc != LOOP {
            return Ok(BreakpointProbe::NotExact);
        }
        seen.push(fd.get_regs().map_err(kvm("read probe registers"))?.rcx);
        bps.step(fd, Slot::EventPoint)?;
    }
    Ok(BreakpointProbe::NotExact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_has_its_own_register_and_enable_bit() {
        let (control, regs) = debug_state([Some(0x1000), Some(0x2000)], false);
        assert_eq!(control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        assert_eq!((regs[0], regs[1], regs[7]), (0x1000, 0x2000, 0b101));
        let (_, regs) = debug_state([None, Some(0x2000)], false);
        assert_eq!((regs[0], regs[1], regs[7]), (0, 0x2000, 0b100));
    }

    /// After a state load replaced what KVM had (here: guest debugging switched off
    /// behind the owner's back), `reapply` sets the breakpoints again.
    #[test]
    fn reapply_restores_what_the_host_lost() {
        let kvm_sys = Kvm::new().expect("/dev/kvm is needed");
        let mut vm = probe_vm::build(&kvm_sys, &[0x90, 0xf4], &[0xf4], 0).expect("probe VM");
        let fd = &mut vm.vcpu;
        let mut bps = Breakpoints::default();
        bps.set(fd, Slot::PageFault, Some(probe_vm::CODE + 1))
            .expect("set");
        let off = kvm_guest_debug {
            control: 0,
            pad: 0,
            arch: kvm_guest_debug_arch { debugreg: [0; 8] },
        };
        fd.set_guest_debug(&off).expect("switch off");
        bps.reapply(fd).expect("reapply");
        let stopped = loop {
            match fd.run() {
                Ok(VcpuExit::Debug(arch)) => break Some(arch.pc),
                Ok(VcpuExit::Hlt) => break None,
                Ok(VcpuExit::Intr) => continue,
                Err(e) if e.errno() == libc::EINTR => continue,
                other => panic!("probe VM: {other:?}"),
            }
        };
        assert_eq!(stopped, Some(probe_vm::CODE + 1));
    }

    #[test]
    fn no_breakpoint_turns_guest_debugging_off() {
        assert_eq!(debug_state([None, None], false), (0, [0; 8]));
    }

    #[test]
    fn a_step_runs_with_every_breakpoint_off() {
        let (control, regs) = debug_state([Some(0x1000), Some(0x2000)], true);
        assert_eq!(control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP);
        assert_eq!(regs[7], 0);
    }
}
