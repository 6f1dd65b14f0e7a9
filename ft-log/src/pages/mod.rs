//! The page codec: how guest pages travel in checkpoint deltas, state transfers and
//! resynchronising checkpoints.
//!
//! The sender keeps a [`Shadow`]: a copy of every page as the receiver last got it. A page
//! that is sent again goes as its XOR with that copy (a page the guest changed a little is
//! mostly zeros then), and the XORs of a set are compressed together in blocks of up to
//! `block_pages` pages (lz4 or zstd). A page that became all zeros, or that equals the copy
//! the receiver has, is a flag with no payload. The receiver rebuilds each page from its
//! own copy of the last version (its [`Shadow`], or for a state transfer its memory, which
//! nothing else writes) and checks a CRC32 of the pages it rebuilt against the sender's, so
//! copies that drifted apart are an error, never a silently corrupt page.
//!
//! [`PageEncoding::Raw`] is the format before this codec (whole pages, no shadow), kept
//! for comparison (`--page-encoding raw`).
//!
//! Decoding is untrusted input: every count and address is checked against the receiver's
//! memory before anything is allocated, and every block must decompress to exactly its
//! pages.

mod decode;
mod encode;
mod shadow;
mod state;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::entry::Page;

pub use decode::decode_onto;
pub use encode::{Listing, PageBatch, PageEncoder};
pub use shadow::Shadow;
pub use state::{StateCodec, StateEncoding, MAX_STATE};

/// Bytes per guest page.
pub const PAGE_SIZE: usize = 4096;
/// Pages per compressed block the encoder makes (see the README's measurements).
pub const BLOCK_PAGES: usize = 64;
/// Largest block a decoder accepts: what one block may make it allocate.
pub const MAX_BLOCK_PAGES: usize = 256;
/// zstd level of [`PageEncoding::XorZstd`] (fast: the primary's vCPU waits for a delta).
pub const ZSTD_LEVEL: i32 = 1;

/// How a sender encodes its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PageEncoding {
    /// Whole pages, every time (the format before the codec).
    Raw,
    /// XOR with the receiver's copy, lz4 blocks.
    #[default]
    XorLz4,
    /// XOR with the receiver's copy, zstd blocks.
    XorZstd,
}

impl PageEncoding {
    /// The encoding's name on the command line (`--page-encoding`) and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PageEncoding::Raw => "raw",
            PageEncoding::XorLz4 => "xor-lz4",
            PageEncoding::XorZstd => "xor-zstd",
        }
    }

    /// The encoding called `name` (see [`PageEncoding::name`]), `None` if there is none.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Raw, Self::XorLz4, Self::XorZstd]
            .into_iter()
            .find(|e| e.name() == name)
    }
}

/// The compressor of a set's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compressor {
    /// lz4 block format.
    Lz4,
    /// zstd, at [`ZSTD_LEVEL`].
    Zstd,
}

/// How one page of an [`XorPages`] set is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageKind {
    /// All zeros now.
    Zero,
    /// Equal to the receiver's copy (listed because the receiver's memory may have been
    /// written since: a replayer runs the guest between deltas).
    Unchanged,
    /// The next page of the blocks: XOR with the receiver's copy.
    Xor,
}

/// Pages encoded against the receiver's copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XorPages {
    /// How every block of the set is compressed.
    pub compressor: Compressor,
    /// Pages per block (the last block may have fewer).
    pub block_pages: u16,
    /// Page numbers (address / 4096), strictly ascending, and how each is sent.
    pub pages: Vec<(u64, PageKind)>,
    /// The XORs of the [`PageKind::Xor`] pages in order, compressed `block_pages` at a time.
    pub blocks: Vec<serde_bytes::ByteBuf>,
    /// CRC32 of the pages the receiver must end up with (each as its address, u64 LE, and
    /// its bytes), in order; for a full checkpoint, of every non-zero page of the shadow
    /// after this set (see [`Shadow::crc32`]).
    pub crc32: u32,
}

/// The pages of one delta, transfer message or checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageSet {
    /// Whole pages (after decoding, every set is this).
    Raw(Vec<Page>),
    /// Pages XORed with the receiver's copies and compressed; decode before use.
    Xor(XorPages),
}

impl Default for PageSet {
    fn default() -> Self {
        PageSet::Raw(Vec::new())
    }
}

impl PageSet {
    /// Pages listed (for a full XOR checkpoint: those that changed).
    pub fn len(&self) -> usize {
        match self {
            PageSet::Raw(p) => p.len(),
            PageSet::Xor(x) => x.pages.len(),
        }
    }

    /// The bytes of page content the set carries: whole pages, or the compressed XOR
    /// blocks (addresses and flags not counted).
    pub fn payload_bytes(&self) -> usize {
        match self {
            PageSet::Raw(p) => p.iter().map(|page| page.data.len()).sum(),
            PageSet::Xor(x) => x.blocks.iter().map(|b| b.len()).sum(),
        }
    }

    /// No pages listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole pages, if decoded (a receiver decodes every set before using it).
    pub fn decoded(&self) -> Option<&[Page]> {
        match self {
            PageSet::Raw(p) => Some(p),
            PageSet::Xor(_) => None,
        }
    }
}

/// Why pages (or a machine state) could not be encoded or decoded. Decoding errors mean
/// damaged or hostile input, or copies that drifted apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageCodecError {
    /// An address outside the guest's memory, or not page aligned.
    #[error("page {gpa:#x} is not a page of the guest's memory")]
    OutOfRange {
        /// The page's guest-physical address (its page number, if the address would
        /// overflow).
        gpa: u64,
    },
    /// Pages not in strictly ascending address order.
    #[error("page {gpa:#x} is listed out of order or twice")]
    Order {
        /// Guest-physical address of the page found out of order.
        gpa: u64,
    },
    /// A set lists more pages than the receiver's memory has.
    #[error("{pages} pages listed; the guest has only {max}")]
    TooMany {
        /// Pages the set lists.
        pages: usize,
        /// The most pages the receiver accepts (its memory's size in pages).
        max: usize,
    },
    /// A page whose data is not [`PAGE_SIZE`] bytes.
    #[error("a page of {len} bytes (a page has {PAGE_SIZE})")]
    PageLength {
        /// Length of the page's data, in bytes.
        len: usize,
    },
    /// A set's pages per block (the value given) is 0 or over [`MAX_BLOCK_PAGES`].
    #[error("block size of {0} pages is outside 1..={MAX_BLOCK_PAGES}")]
    BlockPages(u16),
    /// A set has the wrong number of compressed blocks for its XORed pages.
    #[error("{found} compressed blocks for {pages} changed pages ({expected} expected)")]
    BlockCount {
        /// Blocks the set holds.
        found: usize,
        /// Blocks its XORed pages need.
        expected: usize,
        /// Pages sent as XORs ([`PageKind::Xor`]).
        pages: usize,
    },
    /// A compressed block (or state) does not decompress to exactly its expected length.
    #[error("block {block} does not decompress to its {expected} bytes")]
    Decompress {
        /// Index of the block in the set (0 for a machine state).
        block: usize,
        /// Bytes it should decompress to.
        expected: usize,
    },
    /// The compressor failed on a block.
    #[error("cannot compress a block")]
    Compress,
    /// The rebuilt pages (or state) do not match the sender's CRC32: the receiver's copy
    /// has drifted from the sender's.
    #[error(
        "the rebuilt pages do not match the sender's (CRC32 {computed:08x}, sent {sent:08x}): \
         the receiver's copy of them has drifted from the sender's"
    )]
    Drift {
        /// CRC32 the sender computed.
        sent: u32,
        /// CRC32 of what the receiver rebuilt.
        computed: u32,
    },
    /// An encoded machine state that is malformed or longer than [`MAX_STATE`].
    #[error("a machine state of {len} bytes is damaged or over the limit of {MAX_STATE}")]
    State {
        /// The state's length in bytes (as encoded, or as its header claims).
        len: usize,
    },
    /// The receiver could not read its own copy of a page (reported by its `base` reader).
    #[error("cannot read the receiver's copy of page {gpa:#x}")]
    Base {
        /// Guest-physical address of the page.
        gpa: u64,
    },
}

/// The CRC of a set's pages: address (LE) then bytes, page after page.
pub(crate) fn crc_page(h: &mut crc32fast::Hasher, gpa: u64, data: &[u8]) {
    h.update(&gpa.to_le_bytes());
    h.update(data);
}

pub(crate) fn is_zero(data: &[u8]) -> bool {
    // Word-wise: this runs over every page of a full checkpoint.
    data.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])) == 0)
}
