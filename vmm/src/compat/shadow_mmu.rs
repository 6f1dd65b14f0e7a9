//! Guest memory written by the VMM under a VM that has run (a checkpoint loaded by a
//! replaying or resynchronising backup).
//!
//! A host whose KVM uses shadow paging (this project's PVM hosts, or KVM with EPT/NPT off)
//! builds its own page tables from the guest's and keeps them in step by trapping the
//! guest's writes to guest page tables. Writes the VMM makes through its own mapping are
//! never trapped, so after a checkpoint rewrote page tables the shadow ones still hold
//! the old translations: guest user code, which such hosts run natively, then reads and
//! jumps through mappings the guest no longer has (segfaults in the replayed guest).
//! Re-registering the memory slots makes KVM drop every translation built from them;
//! KVM offers nothing narrower. On a host with EPT/NPT this only costs a rebuild of the
//! second-level tables, so it is done on every host, and counted.

use kvm_bindings::kvm_userspace_memory_region;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use super::{kvm, CompatError};
use crate::memory::MemorySlots;

impl MemorySlots {
    /// After the VMM rewrote guest memory: drop KVM's translations of it by removing and
    /// re-adding every slot. The contents stay (they are the VMM's mapping). The dirty
    /// log starts afresh, which loses nothing: only a replaying VM loads checkpoints,
    /// and it reads no dirty log until it is live and a transfer starts with a full pass.
    pub fn reload(&self, mem: &GuestMemoryMmap) -> Result<(), CompatError> {
        for slot in 0..mem.num_regions() {
            let empty = kvm_userspace_memory_region {
                slot: slot as u32,
                ..Default::default()
            };
            // SAFETY: a zero-sized region deletes the slot; no memory is referenced.
            unsafe { self.vm.set_user_memory_region(empty) }
                .map_err(kvm("remove a memory slot"))?;
        }
        Ok(self.register(mem)?)
    }
}
