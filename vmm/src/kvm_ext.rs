//! KVM ioctls that kvm-ioctls does not wrap.

use kvm_bindings::{kvm_interrupt, KVMIO};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);

/// Queue external interrupt `vector` for the next entry (KVM_INTERRUPT, only valid
/// without an in-kernel irqchip).
pub fn inject_interrupt(vcpu: &VcpuFd, vector: u8) -> Result<(), kvm_ioctls::Error> {
    let irq = kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: the fd is a vCPU fd, the argument is a valid kvm_interrupt that outlives the
    // call, and KVM only reads it.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(kvm_ioctls::Error::last())
    }
}
