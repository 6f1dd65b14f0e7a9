//! The sender's side: pages in, a [`PageSet`] out, the shadow kept equal to what the
//! receiver will have.

use super::{
    crc_page, is_zero, Compressor, PageCodecError, PageEncoding, PageKind, PageSet, Shadow,
    XorPages, BLOCK_PAGES, PAGE_SIZE, ZSTD_LEVEL,
};
use crate::entry::Page;

/// What the pages given to a batch are, and so which of them must be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Dirty pages of a checkpoint delta: the receiver's memory may differ from its copy
    /// (a replayer ran the guest since), so every page is listed, unchanged ones as a flag.
    Dirty,
    /// A state transfer round: the receiver's memory is its copy, so unchanged pages are
    /// left out.
    Changed,
    /// Every page of memory, for a full checkpoint: the receiver makes its whole memory
    /// equal to its copy after the set, so only pages that differ from the copy are sent
    /// (raw: every non-zero page).
    Full,
}

/// The sender's codec state: the encoding and, for the XOR encodings, the shadow.
#[derive(Debug)]
pub struct PageEncoder {
    encoding: PageEncoding,
    shadow: Shadow,
    block_pages: usize,
}

impl PageEncoder {
    /// An encoder for a receiver whose memory (made of `ranges`) is all zeros.
    pub fn new(encoding: PageEncoding, ranges: Vec<(u64, u64)>) -> Self {
        Self {
            encoding,
            shadow: Shadow::new(ranges),
            block_pages: BLOCK_PAGES,
        }
    }

    /// Another block size (for measuring; the decoder takes any of 1..=256).
    pub fn with_block_pages(mut self, pages: usize) -> Self {
        self.block_pages = pages.clamp(1, super::MAX_BLOCK_PAGES);
        self
    }

    /// The encoding this encoder produces.
    pub fn encoding(&self) -> PageEncoding {
        self.encoding
    }

    /// The receiver has `data` at `gpa` already (both sides start from the same memory).
    pub fn seed(&mut self, gpa: u64, data: &[u8]) -> Result<(), PageCodecError> {
        if self.encoding == PageEncoding::Raw {
            return Ok(());
        }
        self.shadow.set(gpa, data)
    }

    /// Non-zero pages the shadow holds (its memory cost is this times 4 KiB).
    pub fn shadow_pages(&self) -> usize {
        self.shadow.non_zero_pages()
    }

    /// Start a set. Pages must be pushed in ascending address order.
    pub fn batch(&mut self, listing: Listing) -> PageBatch<'_> {
        PageBatch {
            listing,
            raw: Vec::new(),
            pages: Vec::new(),
            block: Vec::new(),
            blocks: Vec::new(),
            crc: crc32fast::Hasher::new(),
            last: None,
            enc: self,
        }
    }
}

/// One set being encoded.
pub struct PageBatch<'a> {
    enc: &'a mut PageEncoder,
    listing: Listing,
    raw: Vec<Page>,
    pages: Vec<(u64, PageKind)>,
    /// XORs not yet compressed.
    block: Vec<u8>,
    blocks: Vec<serde_bytes::ByteBuf>,
    crc: crc32fast::Hasher,
    last: Option<u64>,
}

impl PageBatch<'_> {
    /// The page at `gpa` now holds `data`.
    pub fn push(&mut self, gpa: u64, data: &[u8]) -> Result<(), PageCodecError> {
        self.enc.shadow.check(gpa)?;
        if data.len() != PAGE_SIZE {
            return Err(PageCodecError::PageLength { len: data.len() });
        }
        if self.last.is_some_and(|l| gpa <= l) {
            return Err(PageCodecError::Order { gpa });
        }
        self.last = Some(gpa);
        if self.enc.encoding == PageEncoding::Raw {
            if self.listing != Listing::Full || !is_zero(data) {
                self.raw.push(Page {
                    gpa,
                    data: data.to_vec(),
                });
            }
            return Ok(());
        }
        let number = gpa / PAGE_SIZE as u64;
        let old = self.enc.shadow.get(gpa);
        let kind = if old[..] == *data {
            if self.listing != Listing::Dirty {
                return Ok(());
            }
            PageKind::Unchanged
        } else if is_zero(data) {
            PageKind::Zero
        } else {
            self.block.extend(old.iter().zip(data).map(|(o, n)| o ^ n));
            PageKind::Xor
        };
        self.pages.push((number, kind));
        if self.listing != Listing::Full {
            crc_page(&mut self.crc, gpa, data);
        }
        if kind != PageKind::Unchanged {
            self.enc.shadow.set(gpa, data)?;
        }
        if self.block.len() == self.enc.block_pages * PAGE_SIZE {
            self.seal()?;
        }
        Ok(())
    }

    /// Compress the XORs gathered into one block.
    fn seal(&mut self) -> Result<(), PageCodecError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let compressed = match self.enc.encoding {
            PageEncoding::XorZstd => zstd::bulk::compress(&self.block, ZSTD_LEVEL)
                .map_err(|_| PageCodecError::Compress)?,
            _ => lz4_flex::block::compress(&self.block),
        };
        self.blocks.push(serde_bytes::ByteBuf::from(compressed));
        self.block.clear();
        Ok(())
    }

    /// The encoded set.
    pub fn finish(mut self) -> Result<PageSet, PageCodecError> {
        if self.enc.encoding == PageEncoding::Raw {
            return Ok(PageSet::Raw(self.raw));
        }
        self.seal()?;
        let crc32 = if self.listing == Listing::Full {
            self.enc.shadow.crc32()
        } else {
            self.crc.finalize()
        };
        Ok(PageSet::Xor(XorPages {
            compressor: if self.enc.encoding == PageEncoding::XorZstd {
                Compressor::Zstd
            } else {
                Compressor::Lz4
            },
            block_pages: self.enc.block_pages as u16,
            pages: self.pages,
            blocks: self.blocks,
            crc32,
        }))
    }
}
