//! Putting the vCPU in 64-bit mode at the kernel's entry, and the normalised CPUID.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Why the vCPU could not be set up to enter the kernel.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The boot GDT or page tables could not be written to guest memory.
    #[error("cannot write the GDT or page tables to guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// KVM rejected (or could not report) part of the vCPU's state or its CPUID.
    #[error("KVM refused the vCPU's {what}")]
    Kvm {
        /// Which state ("special registers", "MSRs", ...).
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { what, source }
}

/// A GDT entry from flags, base and limit (the layout of the x86 descriptor).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register a GDT entry describes.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |b: u32| ((entry >> b) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: ((((entry >> 48) & 0xf) << 16) | (entry & 0xffff)) as u32
            * if bit(55) == 1 { 4096 } else { 1 }
            + if bit(55) == 1 { 4095 } else { 0 },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

const GDT: [u64; 4] = [
    0,                             // null
    gdt_entry(0xa09b, 0, 0xfffff), // 0x08: 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // 0x10: data
    gdt_entry(0x808b, 0, 0xfffff), // 0x18: TSS (only to make TR valid)
];

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Write the GDT and identity page tables (first 4 GiB, 2 MiB pages) to guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_START))?;
    mem.write_obj(layout::PDPT_START | 0x7, GuestAddress(layout::PML4_START))?;
    for pd in 0..4u64 {
        let pd_addr = layout::PD_START + pd * 0x1000;
        mem.write_obj(pd_addr | 0x7, GuestAddress(layout::PDPT_START + pd * 8))?;
        for i in 0..512u64 {
            let phys = (pd << 30) | (i << 21);
            // present | writable | user | 2 MiB page: user so tiny test guests can run
            // CPL3 code without page tables of their own; Linux replaces these at once.
            mem.write_obj(phys | 0x87, GuestAddress(pd_addr + i * 8))?;
        }
    }
    Ok(())
}

/// Registers for the 64-bit entry of the Linux boot protocol.
pub fn setup_boot_registers(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), CpuError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let code = segment(GDT[1], 1);
    let data = segment(GDT[2], 2);
    let tss = segment(GDT[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = layout::GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: layout::BOOT_STACK_TOP,
        rbp: layout::BOOT_STACK_TOP,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("general registers"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))?;

    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Kvm {
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        tracing::warn!(
            set,
            wanted = entries.len(),
            "KVM accepted only some boot MSRs"
        );
    }
    Ok(())
}

/// MSRs given a defined value at boot (and saved with the vCPU).
pub const BOOT_MSRS: [(u32, u64); 9] = [
    (0x174, 0),             // IA32_SYSENTER_CS
    (0x175, 0),             // IA32_SYSENTER_ESP
    (0x176, 0),             // IA32_SYSENTER_EIP
    (0xc000_0081, 0),       // STAR
    (0xc000_0082, 0),       // LSTAR
    (0xc000_0083, 0),       // CSTAR
    (0xc000_0084, 0),       // SYSCALL_MASK
    (0xc000_0102, 0),       // KERNEL_GS_BASE
    (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
];

/// Leaf 1 ECX bits hidden from the guest: features that are either non-deterministic
/// (RDRAND), need an in-kernel LAPIC (x2APIC, TSC deadline) or fail in some hosts'
/// instruction emulators (XSAVE, AVX, PCID, SSSE3/SSE4, PCLMULQDQ, CX16, POPCNT).
const LEAF1_ECX_HIDDEN: u32 = (1 << 1)
    | (1 << 3)
    | (1 << 5)
    | (1 << 9)
    | (1 << 13)
    | (1 << 15)
    | (1 << 17)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 23)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30);
/// Leaf 1 EDX: no TSC (the guest must take time from devices) and no local APIC.
const LEAF1_EDX_HIDDEN: u32 = (1 << 4) | (1 << 9);
/// Leaf 7 EBX: FSGSBASE, TSC_ADJUST, AVX2, SMEP, INVPCID, RTM/HLE, MPX, AVX-512, RDSEED,
/// SMAP, CLFLUSHOPT, and more that replay cannot follow.
const LEAF7_EBX_HIDDEN: u32 = 1
    | (1 << 1)
    | (1 << 4)
    | (1 << 5)
    | (1 << 7)
    | (1 << 10)
    | (1 << 11)
    | (1 << 14)
    | (1 << 16)
    | (1 << 18)
    | (1 << 20)
    | (1 << 23)
    | (1 << 30)
    | (1 << 31);
/// Leaf 0x8000_0001 EDX: RDTSCP.
const EXT1_EDX_HIDDEN: u32 = 1 << 27;

/// The CPUID ftvm gives every guest: the host's supported set minus everything that is
/// non-deterministic or paravirtual (no KVM signature leaves: no kvmclock, steal time,
/// async page faults or PV EOI), one CPU.
pub fn normalised_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("supported CPUID"))?;
    let entries: Vec<_> = supported
        .as_slice()
        .iter()
        .filter(|e| !(0x4000_0000..0x4000_0100).contains(&e.function))
        .filter(|e| e.function != 0xd) // XSAVE state enumeration
        .map(|e| {
            let mut e = *e;
            match e.function {
                1 => {
                    e.ecx &= !LEAF1_ECX_HIDDEN;
                    e.edx &= !LEAF1_EDX_HIDDEN;
                    // APIC ID 0, one logical processor.
                    e.ebx &= 0x0000_ffff;
                    e.ebx |= 1 << 16;
                    // Bit 31 (hypervisor present) stays: the guest should know.
                }
                7 if e.index == 0 => {
                    e.ebx &= !LEAF7_EBX_HIDDEN;
                    e.ecx = 0;
                    e.edx = 0;
                }
                0x8000_0001 => e.edx &= !EXT1_EDX_HIDDEN,
                0x8000_0007 => e.edx = 0, // no invariant TSC
                _ => {}
            }
            e
        })
        .collect();
    CpuId::from_entries(&entries).map_err(|_| CpuError::Kvm {
        what: "CPUID list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    kvm(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(GDT[1], 1);
        assert_eq!(
            (code.selector, code.l, code.db, code.dpl, code.present),
            (8, 1, 0, 0, 1)
        );
        assert_eq!((code.base, code.limit, code.type_), (0, 0xffff_ffff, 0xb));
        let data = segment(GDT[2], 2);
        assert_eq!(
            (data.selector, data.db, data.l, data.type_),
            (0x10, 1, 0, 3)
        );
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }
}
