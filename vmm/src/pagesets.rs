//! Guest memory through the page codec (`ft_log::pages`): the sender's encoder and the
//! receiver's copy start from a machine's memory, and sets of pages are read from it.
//!
//! Memory cost: with an XOR encoding the sender (a recorder, a primary) keeps a copy of
//! every non-zero page the receiver has, and so does a replayer (a backup): each about the
//! guest's non-zero RAM (62 MiB for the 256 MiB stock guest after boot), growing towards
//! the guest's RAM size as the guest touches more of it.

use ft_log::pages::{Listing, PageCodecError, PageEncoder, PageEncoding, PageSet, Shadow};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::memory::PAGE_SIZE;

/// Why pages could not be read from guest memory or passed through the page codec.
#[derive(Debug, thiserror::Error)]
pub enum PageSetError {
    /// A page could not be read from guest memory.
    #[error("cannot read guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The page codec rejected a page (seeding an encoder or shadow, or encoding a set).
    #[error("cannot encode the pages")]
    Codec(#[from] PageCodecError),
}

/// The RAM ranges of `mem` (start, length).
pub fn ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect()
}

/// Every non-zero page of `mem`, in address order, to `take`.
fn for_each_non_zero(
    mem: &GuestMemoryMmap,
    mut take: impl FnMut(u64, &[u8]) -> Result<(), PageCodecError>,
) -> Result<(), PageSetError> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for gpa in crate::memory::page_addresses(mem) {
        mem.read_slice(&mut page, GuestAddress(gpa))?;
        if page.iter().any(|&b| b != 0) {
            take(gpa, &page)?;
        }
    }
    Ok(())
}

/// An encoder for a receiver that starts from `mem` as it is now.
pub fn encoder(mem: &GuestMemoryMmap, encoding: PageEncoding) -> Result<PageEncoder, PageSetError> {
    let mut enc = PageEncoder::new(encoding, ranges(mem));
    if encoding != PageEncoding::Raw {
        for_each_non_zero(mem, |gpa, data| enc.seed(gpa, data))?;
    }
    Ok(enc)
}

/// A receiver's copy of `mem` as it is now.
pub fn shadow(mem: &GuestMemoryMmap) -> Result<Shadow, PageSetError> {
    let mut shadow = Shadow::new(ranges(mem));
    for_each_non_zero(mem, |gpa, data| shadow.set(gpa, data))?;
    Ok(shadow)
}

/// Encode the pages at `gpas` (any order, duplicates allowed) as they are in `mem` now.
pub fn encode(
    enc: &mut PageEncoder,
    mem: &GuestMemoryMmap,
    mut gpas: Vec<u64>,
    listing: Listing,
) -> Result<PageSet, PageSetError> {
    gpas.sort_unstable();
    gpas.dedup();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut batch = enc.batch(listing);
    for gpa in gpas {
        mem.read_slice(&mut page, GuestAddress(gpa))?;
        batch.push(gpa, &page)?;
    }
    Ok(batch.finish()?)
}
