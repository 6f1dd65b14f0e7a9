//! Saved state of a paused VM: vCPU registers and events, device states, guest time.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::vcpu::VcpuError;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    /// Synchronous exits before this point.
    pub ordinal: u64,
    pub halted: bool,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Kvm { what, source }
}

impl VcpuState {
    pub fn save(fd: &VcpuFd, ordinal: u64, halted: bool) -> Result<Self, VcpuError> {
        let entries: Vec<kvm_msr_entry> = SAVED_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Kvm {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("MSRs"))?;
        Ok(Self {
            regs: fd.get_regs().map_err(kvm("registers"))?,
            sregs: fd.get_sregs().map_err(kvm("special registers"))?,
            fpu: fd.get_fpu().map_err(kvm("FPU state"))?.into(),
            msrs: msrs.as_slice()[..n]
                .iter()
                .map(|e| (e.index, e.data))
                .collect(),
            events: fd.get_vcpu_events().map_err(kvm("pending events"))?,
            debugregs: fd.get_debug_regs().map_err(kvm("debug registers"))?,
            ordinal,
            halted,
        })
    }
}

impl VcpuState {
    /// Load this state into a vCPU (special registers first: they set the mode).
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuError> {
        fd.set_sregs(&self.sregs)
            .map_err(kvm("special registers"))?;
        fd.set_regs(&self.regs).map_err(kvm("registers"))?;
        fd.set_fpu(&kvm_fpu::from(&self.fpu))
            .map_err(kvm("FPU state"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Kvm {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        fd.set_msrs(&msrs).map_err(kvm("MSRs"))?;
        fd.set_vcpu_events(&self.events)
            .map_err(kvm("pending events"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(kvm("debug registers"))?;
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
        if self.sregs.efer & (1 << 10) == 0 && self.regs.rip > u64::from(u32::MAX) {
            return Err("RIP above 4 GiB outside long mode".into());
        }
        Ok(())
    }
}

/// The x87/SSE state (kvm_fpu has no serde support of its own).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
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
    pub vcpu: VcpuState,
    pub platform: crate::platform::PlatformState,
    pub clock_ns: u64,
}

impl VmState {
    /// Checks of the vCPU part; device states are checked when the devices are rebuilt.
    pub fn validate(&self) -> Result<(), String> {
        self.vcpu.validate()
    }
}
