//! A two-page probe VM in 64-bit mode, for asking the host's KVM how it behaves before a
//! guest depends on it (see [`super::syscall::probe`], [`super::breakpoints::probe`]).

use kvm_bindings::kvm_segment;
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{kvm, CompatError};

/// Where a probe's code is loaded (and where it starts).
pub const CODE: u64 = 0x5000;
/// A second code page, for a probe that jumps somewhere else (the SYSCALL target).
pub const CODE2: u64 = 0x6000;
const MEM: usize = 0x10_0000;

/// The probe VM. Fields drop in order: the vCPU and the VM before the memory they map.
pub struct ProbeVm {
    /// The probe's vCPU, ready to run.
    pub vcpu: VcpuFd,
    _slots: crate::memory::MemorySlots,
    _mem: GuestMemoryMmap,
}

/// A flat 64-bit segment at privilege `dpl`.
pub fn flat_segment(selector: u16, type_: u8, dpl: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A VM with the first 2 MiB identity-mapped (user-accessible), `code` at [`CODE`] and
/// `code2` at [`CODE2`], its vCPU in long mode at `cpl` (0 or 3) with RIP at [`CODE`].
pub fn build(kvm_sys: &Kvm, code: &[u8], code2: &[u8], cpl: u8) -> Result<ProbeVm, CompatError> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).map_err(|_| {
        CompatError::Kvm {
            what: "map probe memory",
            source: kvm_ioctls::Error::new(libc::ENOMEM),
        }
    })?;
    let slots = crate::memory::MemorySlots {
        vm: std::sync::Arc::new(kvm_sys.create_vm().map_err(kvm("create the probe VM"))?),
        dirty_log: false,
    };
    slots.register(&mem)?;
    // PML4 0x1000, PDPT 0x2000, PD 0x3000 with one 2 MiB page.
    let w = |v: u64, a: u64| mem.write_obj(v, GuestAddress(a));
    let wrote = w(0x2007, 0x1000)
        .and(w(0x3007, 0x2000))
        .and(w(0x87, 0x3000))
        .and(mem.write_slice(code, GuestAddress(CODE)))
        .and(mem.write_slice(code2, GuestAddress(CODE2)));
    wrote.map_err(|_| CompatError::Kvm {
        what: "write the probe program",
        source: kvm_ioctls::Error::new(libc::EFAULT),
    })?;
    let vcpu = slots
        .vm
        .create_vcpu(0)
        .map_err(kvm("create the probe vCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm("read probe registers"))?;
    if cpl == 0 {
        sregs.cs = flat_segment(0x08, 0xb, 0, 1, 0);
        sregs.ss = flat_segment(0x10, 0x3, 0, 0, 1);
    } else {
        sregs.cs = flat_segment(0x33, 0xb, 3, 1, 0);
        sregs.ss = flat_segment(0x2b, 0x3, 3, 0, 1);
    }
    sregs.ds = sregs.ss;
    sregs.es = sregs.ss;
    sregs.cr0 = 0x8000_0031;
    sregs.cr3 = 0x1000;
    sregs.cr4 = 0x20;
    sregs.efer = 0x501; // SCE | LME | LMA
    sregs.idt.limit = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("set probe registers"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rsp: 0x8000,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("set probe registers"))?;
    Ok(ProbeVm {
        vcpu,
        _slots: slots,
        _mem: mem,
    })
}
