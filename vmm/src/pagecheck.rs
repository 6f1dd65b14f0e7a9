//! Debugging aid for replay divergence: `FTVM_CHECK_PAGES=FILE` makes a recorder write a
//! CRC of every guest page at each checkpoint delta and each event point to FILE, and a
//! replayer compare its own pages with them right after loading the same delta or reaching
//! the same point. A page that differs after a delta was written differently by the replay
//! and not since by the recorder; after a point, the replay ran the stretch before it
//! differently (an event point that named the wrong pass shows here first): divergences
//! that no exit showed. Costs a pass over all of RAM each time; off unless the variable is
//! set.

use std::io::{Read, Write};
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

enum Side {
    Recording(std::fs::File),
    Replaying(std::io::BufReader<std::fs::File>),
}

static CHECK: Mutex<Option<Side>> = Mutex::new(None);

/// Open the check file for this run's side (no-op without the variable).
pub fn start(recording: bool) {
    let Some(path) = std::env::var_os("FTVM_CHECK_PAGES") else {
        return;
    };
    let side = if recording {
        std::fs::File::create(&path).map(Side::Recording)
    } else {
        std::fs::File::open(&path).map(|f| Side::Replaying(std::io::BufReader::new(f)))
    };
    match side {
        Ok(s) => *crate::bus::lock(&CHECK) = Some(s),
        Err(e) => tracing::warn!("FTVM_CHECK_PAGES: {e}"),
    }
}

fn page_crcs(mem: &GuestMemoryMmap) -> Vec<(u64, u32)> {
    let mut page = [0u8; crate::memory::PAGE_SIZE as usize];
    crate::memory::page_addresses(mem)
        .filter_map(|gpa| {
            mem.read_slice(&mut page, GuestAddress(gpa))
                .ok()
                .map(|()| (gpa, crc32fast::hash(&page)))
        })
        .collect()
}

/// At a delta (recorder: when taken; replayer: right after loading it) or an event point
/// (recorder: when logged; replayer: when reached).
pub fn at_delta(mem: &GuestMemoryMmap, ordinal: u64) {
    let mut guard = crate::bus::lock(&CHECK);
    let Some(side) = guard.as_mut() else {
        return;
    };
    let mine = page_crcs(mem);
    match side {
        Side::Recording(f) => {
            let mut buf = Vec::with_capacity(16 + mine.len() * 4);
            buf.extend_from_slice(&ordinal.to_le_bytes());
            buf.extend_from_slice(&(mine.len() as u64).to_le_bytes());
            for (_, c) in &mine {
                buf.extend_from_slice(&c.to_le_bytes());
            }
            if let Err(e) = f.write_all(&buf) {
                tracing::warn!("FTVM_CHECK_PAGES: {e}");
            }
        }
        Side::Replaying(r) => {
            let mut head = [0u8; 16];
            if r.read_exact(&mut head).is_err() {
                tracing::warn!(
                    ordinal,
                    "page check: the recorder's file has no more deltas"
                );
                return;
            }
            let rec_ordinal = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
            let n = u64::from_le_bytes(head[8..].try_into().unwrap_or_default()) as usize;
            let mut crcs = vec![0u8; n * 4];
            if r.read_exact(&mut crcs).is_err() {
                return;
            }
            let differ: Vec<u64> = mine
                .iter()
                .zip(crcs.chunks(4))
                .filter(|((_, c), theirs)| c.to_le_bytes() != **theirs)
                .map(|((gpa, _), _)| *gpa)
                .collect();
            if rec_ordinal != ordinal || !differ.is_empty() {
                let list: Vec<String> = differ.iter().take(16).map(|g| format!("{g:#x}")).collect();
                tracing::warn!(
                    ordinal,
                    rec_ordinal,
                    differing = differ.len(),
                    "page check after a delta or event point: {}",
                    list.join(" ")
                );
            }
        }
    }
}
