//! Which parts of a disk image were written since a point: the disk's side of a state
//! transfer, as KVM's dirty log is the memory's. A joining backup first receives every
//! chunk of the image while the guest runs on; the chunks written meanwhile are sent
//! again, round after round, and the last ones while the guest is paused.
//!
//! Tracking is off until [`DirtyChunks::start`] (a disk under no transfer pays one
//! uncontended lock per write). A chunk is marked after its write has reached the file,
//! so a reader that takes the marks before reading a chunk either sees the new data or
//! finds the chunk marked again at the next take.

use std::sync::Mutex;

/// Bytes per tracked chunk (and per chunk message of the transfer).
pub const CHUNK: u64 = 64 * 1024;

/// The set of [`CHUNK`]-sized chunks of an image written since tracking started or since
/// they were last taken.
#[derive(Debug, Default)]
pub struct DirtyChunks {
    /// One bit per chunk while tracking; `None` while not.
    bits: Mutex<Option<Vec<u64>>>,
}

impl DirtyChunks {
    /// Start tracking an image of `len` bytes with nothing marked (again, if it was).
    pub fn start(&self, len: u64) {
        let chunks = len.div_ceil(CHUNK);
        let words = usize::try_from(chunks.div_ceil(64)).unwrap_or(usize::MAX);
        *self.lock() = Some(vec![0; words]);
    }

    /// Stop tracking and forget the marks.
    pub fn stop(&self) {
        *self.lock() = None;
    }

    /// Note a write of `len` bytes at `offset` (no-op while not tracking; the part past
    /// the tracked image, which the backend refuses anyway, is ignored).
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut guard = self.lock();
        let Some(bits) = guard.as_mut() else { return };
        let first = offset / CHUNK;
        let last = offset.saturating_add(len - 1) / CHUNK;
        for chunk in first..=last {
            let Ok(word) = usize::try_from(chunk / 64) else {
                break;
            };
            let Some(w) = bits.get_mut(word) else { break };
            *w |= 1 << (chunk % 64);
        }
    }

    /// The chunks marked since the last take (or the start), in order; clears them.
    pub fn take(&self) -> Vec<u64> {
        let mut guard = self.lock();
        let Some(bits) = guard.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (w, word) in bits.iter_mut().enumerate() {
            let mut b = std::mem::take(word);
            while b != 0 {
                out.push(w as u64 * 64 + u64::from(b.trailing_zeros()));
                b &= b - 1;
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u64>>> {
        // A panic elsewhere while holding the lock leaves plain bits: still usable.
        self.bits.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_tracked_before_start() {
        let d = DirtyChunks::default();
        d.mark(0, 4096);
        assert!(d.take().is_empty());
    }

    #[test]
    fn writes_mark_every_chunk_they_touch_once() {
        let d = DirtyChunks::default();
        d.start(10 * CHUNK);
        d.mark(CHUNK - 512, 1024); // straddles chunks 0 and 1
        d.mark(5 * CHUNK, 512);
        d.mark(5 * CHUNK + 512, 512);
        assert_eq!(d.take(), vec![0, 1, 5]);
        assert!(d.take().is_empty(), "a take clears the marks");
        d.mark(9 * CHUNK, CHUNK);
        assert_eq!(d.take(), vec![9]);
    }

    #[test]
    fn out_of_range_and_empty_writes_are_harmless() {
        let d = DirtyChunks::default();
        d.start(CHUNK + 1);
        d.mark(u64::MAX - 10, 100);
        d.mark(70 * 64 * CHUNK, 1);
        d.mark(0, 0);
        assert!(d.take().is_empty());
        d.mark(CHUNK, 1);
        assert_eq!(d.take(), vec![1]);
        d.stop();
        d.mark(0, 1);
        assert!(d.take().is_empty());
    }
}
