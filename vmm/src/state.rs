//! Saved state of a paused VM: vCPU registers and events, device states, guest time.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::vcpu::VcpuError;

pub mod wire;

/// MSRs saved with the vCPU (beyond those in the special registers).
pub const SAVED_MSRS: [u32; 12] = [
    0x174,
    0x175,
    0x176, // SYSENTER CS/ESP/EIP
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084, // STAR, LSTAR, CSTAR, SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0x277,       // PAT
    0x2ff,       // MTRRdefType
    0x1a0,       // MISC_ENABLE
    0xc000_0103, // TSC_AUX
];

/// Words in KVM's (non-extended) XSAVE area.
const XSAVE_WORDS: usize = 1024;
/// XCR slots in `kvm_xcrs`.
const MAX_XCRS: usize = 16;

/// The saved state of the vCPU, as KVM reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER and APIC base.
    pub sregs: kvm_sregs,
    /// x87 and SSE state.
    pub fpu: FpuState,
    /// The [`SAVED_MSRS`] KVM returned: (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Pending and injected exceptions and interrupts, NMI and interrupt-shadow state.
    pub events: kvm_vcpu_events,
    /// Debug registers DR0-DR3, DR6 and DR7.
    pub debugregs: kvm_debugregs,
    /// The whole XSAVE area (KVM_GET_XSAVE), where KVM has it. KVM_GET_FPU holds only
    /// x87 and SSE, but a guest can use more than its kernel enabled: on hosts that run
    /// guest user code natively under the host's XCR0 (shared/HOST-KVM.md), user space uses
    /// AVX-512 mask and upper registers (glibc's EVEX string functions) even with `noxsave`.
    /// Left out, a restored or replayed guest computes with stale registers.
    /// Absent in snapshots written before it was saved.
    #[serde(default)]
    pub xsave: Option<Vec<u32>>,
    /// The extended control registers (XCR0), saved with the XSAVE area.
    #[serde(default)]
    pub xcrs: Option<Vec<(u32, u64)>>,
    /// Synchronous exits before this point.
    pub ordinal: u64,
    /// Whether the vCPU was halted (HLT), waiting for an interrupt.
    pub halted: bool,
}

fn get(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Get { what, source }
}

fn set(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Set { what, source }
}

impl VcpuState {
    /// Read the state of the vCPU `fd`, which has made `ordinal` synchronous exits and is
    /// `halted` or not.
    pub fn save(fd: &VcpuFd, ordinal: u64, halted: bool) -> Result<Self, VcpuError> {
        let entries: Vec<kvm_msr_entry> = SAVED_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList(entries.len()))?;
        let n = fd.get_msrs(&mut msrs).map_err(get("MSRs"))?;
        Ok(Self {
            regs: fd.get_regs().map_err(get("registers"))?,
            sregs: fd.get_sregs().map_err(get("special registers"))?,
            fpu: fd.get_fpu().map_err(get("FPU state"))?.into(),
            msrs: msrs.as_slice()[..n]
                .iter()
                .map(|e| (e.index, e.data))
                .collect(),
            events: fd.get_vcpu_events().map_err(get("pending events"))?,
            debugregs: fd.get_debug_regs().map_err(get("debug registers"))?,
            // A host without KVM_CAP_XSAVE refuses these: the FPU state above is all.
            xsave: fd.get_xsave().ok().map(|x| x.region.to_vec()),
            xcrs: fd.get_xcrs().ok().map(|x| {
                x.xcrs[..(x.nr_xcrs as usize).min(x.xcrs.len())]
                    .iter()
                    .map(|c| (c.xcr, c.value))
                    .collect()
            }),
            ordinal,
            halted,
        })
    }
}

impl VcpuState {
    /// Load this state into a vCPU (special registers first: they set the mode).
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuError> {
        fd.set_sregs(&self.sregs)
            .map_err(set("special registers"))?;
        fd.set_regs(&self.regs).map_err(set("registers"))?;
        fd.set_fpu(&kvm_fpu::from(&self.fpu))
            .map_err(set("FPU state"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList(entries.len()))?;
        fd.set_msrs(&msrs).map_err(set("MSRs"))?;
        fd.set_vcpu_events(&self.events)
            .map_err(set("pending events"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(set("debug registers"))?;
        if let Some(xcrs) = &self.xcrs {
            let mut k = kvm_xcrs {
                nr_xcrs: xcrs.len() as u32,
                ..Default::default()
            };
            for (slot, &(xcr, value)) in k.xcrs.iter_mut().zip(xcrs) {
                *slot = kvm_xcr {
                    xcr,
                    value,
                    ..Default::default()
                };
            }
            fd.set_xcrs(&k).map_err(set("extended control registers"))?;
        }
        if let Some(region) = &self.xsave {
            let mut x = kvm_xsave::default();
            x.region.copy_from_slice(region);
            // SAFETY: KVM reads at most the size KVM_CAP_XSAVE2 reports, which exceeds
            // the 4096 bytes of `kvm_xsave` only after the VMM asked for dynamically
            // enabled features (arch_prctl ARCH_REQ_XCOMP_GUEST_PERM); ftvm never does.
            unsafe { fd.set_xsave(&x) }.map_err(set("XSAVE area"))?;
        }
        Ok(())
    }

    /// Checks that do not need KVM (which checks the registers themselves on restore).
    pub fn validate(&self) -> Result<(), String> {
        if self.msrs.len() > SAVED_MSRS.len() {
            return Err(format!(
                "{} MSRs, at most {} are saved",
                self.msrs.len(),
                SAVED_MSRS.len()
            ));
        }
        if let Some((index, _)) = self.msrs.iter().find(|(i, _)| !SAVED_MSRS.contains(i)) {
            return Err(format!("MSR {index:#x} is not one ftvm saves"));
        }
        if let Some(x) = &self.xsave {
            if x.len() != XSAVE_WORDS {
                return Err(format!(
                    "XSAVE area of {} words, KVM's has {XSAVE_WORDS}",
                    x.len()
                ));
            }
        }
        if let Some(xcrs) = &self.xcrs {
            if xcrs.len() > MAX_XCRS {
                return Err(format!("{} XCRs, KVM has at most {MAX_XCRS}", xcrs.len()));
            }
        }
        if self.sregs.efer & (1 << 10) == 0 && self.regs.rip > u64::from(u32::MAX) {
            return Err("RIP above 4 GiB outside long mode".into());
        }
        Ok(())
    }
}

/// The x87/SSE state (kvm_fpu has no serde support of its own).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FpuState {
    /// The x87 registers ST0-ST7, 80 bits each in a 16-byte slot.
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word (one bit per register: in use or empty).
    pub ftwx: u8,
    /// Opcode of the last x87 instruction.
    pub last_opcode: u16,
    /// Address of the last x87 instruction.
    pub last_ip: u64,
    /// Address of the last x87 instruction's memory operand.
    pub last_dp: u64,
    /// The SSE registers XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status register.
    pub mxcsr: u32,
}

impl From<kvm_fpu> for FpuState {
    fn from(f: kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// A whole paused VM apart from its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The vCPU's registers and events.
    pub vcpu: VcpuState,
    /// Every device's state and the console position.
    pub platform: crate::platform::PlatformState,
    /// Guest virtual time, in nanoseconds.
    pub clock_ns: u64,
}

impl VmState {
    /// Checks of the vCPU part; device states are checked when the devices are rebuilt.
    pub fn validate(&self) -> Result<(), String> {
        self.vcpu.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> VcpuState {
        VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            fpu: kvm_fpu::default().into(),
            msrs: vec![],
            events: Default::default(),
            debugregs: Default::default(),
            xsave: Some(vec![0; XSAVE_WORDS]),
            xcrs: Some(vec![(0, 1)]),
            ordinal: 0,
            halted: false,
        }
    }

    #[test]
    fn a_whole_xsave_area_is_accepted_and_a_short_one_refused() {
        assert_eq!(state().validate(), Ok(()));
        let mut s = state();
        s.xsave = Some(vec![0; 100]);
        assert!(s
            .validate()
            .unwrap_err()
            .contains("XSAVE area of 100 words"));
    }

    #[test]
    fn too_many_xcrs_are_refused() {
        let mut s = state();
        s.xcrs = Some(vec![(0, 1); MAX_XCRS + 1]);
        assert!(s.validate().unwrap_err().contains("XCRs"));
    }

    #[test]
    fn a_state_saved_before_xsave_was_saved_still_loads() {
        let mut v = serde_json::to_value(state()).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("xsave");
        obj.remove("xcrs");
        let s: VcpuState = serde_json::from_value(v).unwrap();
        assert!(s.xsave.is_none() && s.xcrs.is_none());
        assert_eq!(s.validate(), Ok(()));
    }
}
