//! Guest physical memory: RAM below the MMIO hole and, for large guests, above 4 GiB, and
//! its registration with KVM as memory slots.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Start of the 32-bit MMIO hole (devices live here, never RAM).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above the hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Smallest guest that can hold the boot structures, a kernel at 1 MiB and a stack.
pub const MIN_MEM_MIB: u64 = 8;

/// Why guest memory could not be sized, mapped or registered with KVM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below [`MIN_MEM_MIB`].
    #[error("--mem {mib} MiB is too small: ftvm needs at least {MIN_MEM_MIB} MiB")]
    TooSmall {
        /// Requested guest memory, in MiB.
        mib: u64,
    },
    /// The requested size is more than the host's total RAM.
    #[error("--mem {mib} MiB is more than this host's {host_mib} MiB of RAM")]
    TooLarge {
        /// Requested guest memory, in MiB.
        mib: u64,
        /// The host's total RAM, in MiB.
        host_mib: u64,
    },
    /// /proc/meminfo could not be read or has no MemTotal line.
    #[error("cannot read the host's memory size from /proc/meminfo")]
    HostSize(#[source] std::io::Error),
    /// The host refused to map the guest's RAM.
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        /// Requested guest memory, in MiB.
        mib: u64,
        /// The mapping error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A region of guest memory has no host address to give KVM.
    #[error("guest memory region {slot} has no host mapping")]
    Unmapped {
        /// Index of the region (and of its memory slot).
        slot: u32,
    },
    /// KVM rejected a region as a memory slot.
    #[error("KVM refused guest memory region {slot} as a memory slot")]
    Register {
        /// Index of the region (and of its memory slot).
        slot: u32,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The RAM ranges of a guest of `mib` MiB: (start, length).
pub fn ram_ranges(mib: u64) -> Vec<(GuestAddress, usize)> {
    let bytes = mib << 20;
    let low = bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if bytes > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), (bytes - low) as usize));
    }
    ranges
}

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;

/// The guest-physical address of every page of guest RAM, region by region.
pub fn page_addresses(mem: &GuestMemoryMmap) -> impl Iterator<Item = u64> + '_ {
    mem.iter().flat_map(|region| {
        let start = region.start_addr().raw_value();
        (0..region.len() / PAGE_SIZE).map(move |i| start + i * PAGE_SIZE)
    })
}

/// A VM's memory slots: slot i is region i of its guest memory.
pub struct MemorySlots {
    /// The VM the slots belong to.
    pub vm: Arc<VmFd>,
    /// Whether KVM logs the pages the guest dirties (recording and primary VMs).
    pub dirty_log: bool,
}

impl MemorySlots {
    /// Register every region of `mem` as a slot (slot i is region i).
    pub fn register(&self, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| MemoryError::Unmapped { slot })?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: if self.dirty_log {
                    kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the machine keeps
            // for as long as the VM fd exists, and the slots do not overlap.
            unsafe { self.vm.set_user_memory_region(desc) }
                .map_err(|source| MemoryError::Register { slot, source })?;
        }
        Ok(())
    }
}

/// Total RAM of this host in MiB.
fn host_mem_mib() -> Result<u64, MemoryError> {
    let info = std::fs::read_to_string("/proc/meminfo").map_err(MemoryError::HostSize)?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .ok_or_else(|| {
            MemoryError::HostSize(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MemTotal line",
            ))
        })
}

/// Check a requested size against the machine's limits and this host.
pub fn check_size(mib: u64) -> Result<(), MemoryError> {
    if mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall { mib });
    }
    let host_mib = host_mem_mib()?;
    if mib > host_mib {
        return Err(MemoryError::TooLarge { mib, host_mib });
    }
    Ok(())
}

/// Map the guest's RAM (anonymous, zeroed).
pub fn create(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    check_size(mib)?;
    GuestMemoryMmap::from_ranges(&ram_ranges(mib))
        .map_err(|source| MemoryError::Map { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(64), vec![(GuestAddress(0), 64 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let r = ram_ranges(4096);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_HOLE_END), (1 << 30) as usize));
    }

    #[test]
    fn page_addresses_cover_every_region() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 2 * PAGE_SIZE as usize),
            (GuestAddress(0x10_0000), PAGE_SIZE as usize),
        ])
        .unwrap();
        let pages: Vec<u64> = page_addresses(&mem).collect();
        assert_eq!(pages, vec![0, PAGE_SIZE, 0x10_0000]);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(
            check_size(1),
            Err(MemoryError::TooSmall { mib: 1 })
        ));
        assert!(matches!(
            check_size(1 << 40),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(check_size(64).is_ok());
    }
}
