//! A copy of guest memory as the other side has it: only its non-zero pages are stored, so
//! it costs what the guest's non-zero memory costs (a 256 MiB stock guest: about 62 MiB).

use std::collections::HashMap;

use super::{crc_page, is_zero, PageCodecError, PageSet, PAGE_SIZE};
use crate::entry::Page;

const ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A copy of guest memory as the receiver last got it, kept by the sender and by a
/// replaying receiver: what XOR-encoded pages are taken against. Zero pages are not stored.
#[derive(Debug, Clone)]
pub struct Shadow {
    /// Guest RAM ranges (start, length in bytes), page aligned.
    ranges: Vec<(u64, u64)>,
    /// Non-zero pages by page number; a page not here is all zeros.
    pages: HashMap<u64, Box<[u8; PAGE_SIZE]>>,
}

impl Shadow {
    /// An all-zero copy of a memory made of `ranges` (start, length in bytes).
    pub fn new(ranges: Vec<(u64, u64)>) -> Self {
        Self {
            ranges,
            pages: HashMap::new(),
        }
    }

    /// Pages of the memory this copies.
    pub fn max_pages(&self) -> usize {
        let bytes: u64 = self.ranges.iter().map(|r| r.1).sum();
        usize::try_from(bytes / PAGE_SIZE as u64).unwrap_or(usize::MAX)
    }

    /// `gpa` is a page of the memory.
    pub fn check(&self, gpa: u64) -> Result<(), PageCodecError> {
        let inside = gpa.is_multiple_of(PAGE_SIZE as u64)
            && self
                .ranges
                .iter()
                .any(|&(start, len)| gpa >= start && gpa - start < len);
        if inside {
            Ok(())
        } else {
            Err(PageCodecError::OutOfRange { gpa })
        }
    }

    /// The copy of page `gpa` (zeros if never set).
    pub fn get(&self, gpa: u64) -> &[u8; PAGE_SIZE] {
        self.pages
            .get(&(gpa / PAGE_SIZE as u64))
            .map_or(&ZERO, |p| p)
    }

    /// Set the copy of page `gpa`.
    pub fn set(&mut self, gpa: u64, data: &[u8]) -> Result<(), PageCodecError> {
        self.check(gpa)?;
        let data: &[u8; PAGE_SIZE] = data
            .try_into()
            .map_err(|_| PageCodecError::PageLength { len: data.len() })?;
        let n = gpa / PAGE_SIZE as u64;
        if is_zero(data) {
            self.pages.remove(&n);
        } else if let Some(p) = self.pages.get_mut(&n) {
            p.copy_from_slice(data);
        } else {
            self.pages.insert(n, Box::new(*data));
        }
        Ok(())
    }

    /// Non-zero pages held.
    pub fn non_zero_pages(&self) -> usize {
        self.pages.len()
    }

    /// Addresses of the non-zero pages, ascending.
    fn sorted(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self.pages.keys().map(|n| n * PAGE_SIZE as u64).collect();
        keys.sort_unstable();
        keys
    }

    /// CRC32 of every non-zero page, ascending (what a full checkpoint's CRC covers).
    pub fn crc32(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for gpa in self.sorted() {
            crc_page(&mut h, gpa, self.get(gpa));
        }
        h.finalize()
    }

    /// Every non-zero page, ascending (a full checkpoint as whole pages).
    pub fn whole_pages(&self) -> Vec<Page> {
        self.sorted()
            .into_iter()
            .map(|gpa| Page {
                gpa,
                data: self.get(gpa).to_vec(),
            })
            .collect()
    }

    /// Receiver: take `set` (sent against this copy), update the copy, and return the
    /// whole pages to write into memory. `full`: a full checkpoint, returned as every
    /// non-zero page (the receiver zeroes all others). The CRC is checked before the copy
    /// changes, so a set that fails leaves it as it was.
    pub fn apply(&mut self, set: PageSet, full: bool) -> Result<Vec<Page>, PageCodecError> {
        let pages = match set {
            PageSet::Raw(pages) => {
                for p in &pages {
                    self.check(p.gpa)?;
                    if p.data.len() != PAGE_SIZE {
                        return Err(PageCodecError::PageLength { len: p.data.len() });
                    }
                }
                if full {
                    // Raw full checkpoints list every non-zero page; the rest are zero.
                    self.pages.clear();
                }
                pages
            }
            PageSet::Xor(x) => {
                let max = self.max_pages();
                let mut check = crc32fast::Hasher::new();
                let mut out = Vec::with_capacity(x.pages.len().min(max));
                super::decode::decode(
                    &x,
                    max,
                    |gpa, base| {
                        self.check(gpa)?;
                        base.copy_from_slice(self.get(gpa));
                        Ok(())
                    },
                    |gpa, data| {
                        if !full {
                            crc_page(&mut check, gpa, data);
                        }
                        out.push(Page {
                            gpa,
                            data: data.to_vec(),
                        });
                    },
                )?;
                if full {
                    // The CRC covers the whole copy after the set; a mismatch puts the
                    // pages it changed back.
                    let before: Vec<(u64, Option<Box<[u8; PAGE_SIZE]>>)> = out
                        .iter()
                        .map(|p| {
                            let n = p.gpa / PAGE_SIZE as u64;
                            (p.gpa, self.pages.get(&n).cloned())
                        })
                        .collect();
                    for p in &out {
                        self.set(p.gpa, &p.data)?;
                    }
                    let computed = self.crc32();
                    if computed != x.crc32 {
                        for (gpa, old) in before {
                            let n = gpa / PAGE_SIZE as u64;
                            match old {
                                Some(page) => self.pages.insert(n, page),
                                None => self.pages.remove(&n),
                            };
                        }
                        return Err(PageCodecError::Drift {
                            sent: x.crc32,
                            computed,
                        });
                    }
                    return Ok(self.whole_pages());
                }
                let computed = check.finalize();
                if computed != x.crc32 {
                    return Err(PageCodecError::Drift {
                        sent: x.crc32,
                        computed,
                    });
                }
                out
            }
        };
        for p in &pages {
            self.set(p.gpa, &p.data)?;
        }
        Ok(pages)
    }
}
