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

/// Let KVM finish the instruction of the last I/O exit (a port or MMIO read only gets its
/// value, and its RIP advance, on the next KVM_RUN) without running the guest further, so
/// that the registers read next are the ones the guest will continue from. Without this
/// a state saved at an exit (a checkpoint, a state transfer) misses the read's result,
/// and a state loaded at an exit is overwritten by the completion of the old one. Returns
/// false if KVM ran into another exit instead (a string instruction's next iteration),
/// which the caller cannot settle.
pub fn complete_pending_io(vcpu: &mut VcpuFd) -> Result<bool, kvm_ioctls::Error> {
    vcpu.set_kvm_immediate_exit(1);
    let result = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    match result {
        Err(e) if e.errno() == libc::EINTR => Ok(true),
        Ok(()) => Ok(false),
        Err(e) => Err(e),
    }
}
