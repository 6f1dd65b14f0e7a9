//! Guest memory as devices write it: a second view of the guest's RAM whose bitmap marks
//! the pages written through it (KVM's dirty log does not see writes the VMM makes), so
//! checkpoint deltas can add the pages a disk read or a received frame changed.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

use crate::memory::PAGE_SIZE;

pub(super) type DmaMemory = GuestMemoryMmap<AtomicBitmap>;

/// A view of `mem`'s mappings whose bitmap records the pages written through it.
pub(super) fn dma_view(mem: &GuestMemoryMmap) -> Result<DmaMemory, String> {
    let mut regions = Vec::new();
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the pointer and length are those of a live mapping owned by `mem`, which
        // `Pci` keeps (a clone sharing the mappings) for as long as the view exists; the
        // view does not own the mapping and never unmaps it. Protection and flags are
        // those vm-memory's `from_ranges` used to create it.
        let mapping = unsafe {
            MmapRegion::<AtomicBitmap>::build_raw(
                region.as_ptr(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE,
            )
        }
        .map_err(|e| e.to_string())?;
        regions.push(
            GuestRegionMmap::new(mapping, region.start_addr())
                .ok_or_else(|| "region overflows".to_string())?,
        );
    }
    DmaMemory::from_regions(regions).map_err(|e| e.to_string())
}

/// Pages written through `dma` since the last call (guest-physical addresses).
pub(super) fn take_written_pages(dma: &DmaMemory) -> Vec<u64> {
    let mut pages = Vec::new();
    for region in dma.iter() {
        let start = region.start_addr().raw_value();
        let bitmap = MmapRegion::bitmap(&**region);
        for (w, word) in bitmap.get_and_reset().into_iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                pages.push(start + (w as u64 * 64 + bit) * PAGE_SIZE);
            }
        }
    }
    pages
}
