//! Rebuilding pages from an [`XorPages`] set and the receiver's copies.

use super::MAX_BLOCK_PAGES;
use super::{crc_page, Compressor, PageCodecError, PageKind, PageSet, XorPages, PAGE_SIZE};
use crate::entry::Page;

/// Decompress `block` into exactly `out` (every byte of it, no more).
fn decompress(
    compressor: Compressor,
    block: &[u8],
    out: &mut [u8],
    index: usize,
) -> Result<(), PageCodecError> {
    let got = match compressor {
        Compressor::Lz4 => lz4_flex::block::decompress_into(block, out).ok(),
        Compressor::Zstd => zstd::bulk::decompress_to_buffer(block, out).ok(),
    };
    if got == Some(out.len()) {
        Ok(())
    } else {
        Err(PageCodecError::Decompress {
            block: index,
            expected: out.len(),
        })
    }
}

/// Rebuild every page of `x`: `base(gpa, buf)` fills `buf` with the receiver's copy of
/// `gpa` (and refuses an address outside its memory), `out(gpa, page)` takes each rebuilt
/// page in order. At most `max_pages` pages; one block's worth of memory is allocated.
pub(super) fn decode(
    x: &XorPages,
    max_pages: usize,
    mut base: impl FnMut(u64, &mut [u8; PAGE_SIZE]) -> Result<(), PageCodecError>,
    mut out: impl FnMut(u64, &[u8; PAGE_SIZE]),
) -> Result<(), PageCodecError> {
    if x.pages.len() > max_pages {
        return Err(PageCodecError::TooMany {
            pages: x.pages.len(),
            max: max_pages,
        });
    }
    let per_block = usize::from(x.block_pages);
    if per_block == 0 || per_block > MAX_BLOCK_PAGES {
        return Err(PageCodecError::BlockPages(x.block_pages));
    }
    let changed = x.pages.iter().filter(|p| p.1 == PageKind::Xor).count();
    let expected = changed.div_ceil(per_block);
    if x.blocks.len() != expected {
        return Err(PageCodecError::BlockCount {
            found: x.blocks.len(),
            expected,
            pages: changed,
        });
    }
    let mut block = vec![0u8; per_block.min(changed) * PAGE_SIZE];
    let mut in_block = 0usize; // pages of `block` already used
    let mut block_len = 0usize; // pages in `block`
    let mut next_block = 0usize;
    let mut left = changed;
    let mut last: Option<u64> = None;
    let mut page = [0u8; PAGE_SIZE];
    for &(number, kind) in &x.pages {
        let gpa = number
            .checked_mul(PAGE_SIZE as u64)
            .ok_or(PageCodecError::OutOfRange { gpa: number })?;
        if last.is_some_and(|l| number <= l) {
            return Err(PageCodecError::Order { gpa });
        }
        last = Some(number);
        match kind {
            PageKind::Zero => page.fill(0),
            PageKind::Unchanged => base(gpa, &mut page)?,
            PageKind::Xor => {
                if in_block == block_len {
                    block_len = left.min(per_block);
                    let index = next_block;
                    let compressed = x.blocks.get(index).ok_or(PageCodecError::BlockCount {
                        found: x.blocks.len(),
                        expected,
                        pages: changed,
                    })?;
                    decompress(
                        x.compressor,
                        compressed,
                        &mut block[..block_len * PAGE_SIZE],
                        index,
                    )?;
                    next_block += 1;
                    left -= block_len;
                    in_block = 0;
                }
                base(gpa, &mut page)?;
                let diff = &block[in_block * PAGE_SIZE..(in_block + 1) * PAGE_SIZE];
                for (b, d) in page.iter_mut().zip(diff) {
                    *b ^= d;
                }
                in_block += 1;
            }
        }
        out(gpa, &page);
    }
    Ok(())
}

/// Decode `set` onto the receiver's memory, read through `base` (a state transfer: the
/// backup's memory is exactly what the primary sent before, nothing else writes it). Checks
/// the CRC. Returns the whole pages to write.
pub fn decode_onto(
    set: PageSet,
    max_pages: usize,
    mut base: impl FnMut(u64, &mut [u8; PAGE_SIZE]) -> Result<(), PageCodecError>,
) -> Result<Vec<Page>, PageCodecError> {
    match set {
        PageSet::Raw(pages) => {
            if pages.len() > max_pages {
                return Err(PageCodecError::TooMany {
                    pages: pages.len(),
                    max: max_pages,
                });
            }
            if let Some(p) = pages.iter().find(|p| p.data.len() != PAGE_SIZE) {
                return Err(PageCodecError::PageLength { len: p.data.len() });
            }
            Ok(pages)
        }
        PageSet::Xor(x) => {
            let mut h = crc32fast::Hasher::new();
            let mut out = Vec::with_capacity(x.pages.len().min(max_pages));
            decode(&x, max_pages, &mut base, |gpa, data| {
                crc_page(&mut h, gpa, data);
                out.push(Page {
                    gpa,
                    data: data.to_vec(),
                });
            })?;
            let computed = h.finalize();
            if computed != x.crc32 {
                return Err(PageCodecError::Drift {
                    sent: x.crc32,
                    computed,
                });
            }
            Ok(out)
        }
    }
}
