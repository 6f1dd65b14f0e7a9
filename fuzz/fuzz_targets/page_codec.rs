//! The page codec (`ft_log::pages`) on hostile input, two ways chosen by the first byte:
//!
//! - decode: the rest is a bincode `PageSet` (as a delta or transfer message carries it),
//!   applied to a receiver's copy of a small memory: never a panic; when it succeeds every
//!   page returned is a whole page inside the memory, and the copy holds what was returned.
//! - round trip: the rest drives a sender (which pages change, and how) through several
//!   sets; a receiver that starts from the same copy must rebuild exactly the sender's
//!   pages, each time, for every encoding.

#![no_main]

use ft_log::pages::{Listing, PageEncoder, PageEncoding, PageSet, Shadow, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;

const PAGES: u64 = 16;

fn ranges() -> Vec<(u64, u64)> {
    vec![(0, PAGES * PAGE_SIZE as u64)]
}

fn seeded(fill: u8) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| (i as u8).wrapping_mul(fill))
        .collect()
}

fn decode(full: bool, data: &[u8]) {
    let cfg = bincode::config::standard().with_limit::<{ 1 << 20 }>();
    let Ok((set, _)) = bincode::serde::decode_from_slice::<PageSet, _>(data, cfg) else {
        return;
    };
    let mut rx = Shadow::new(ranges());
    for n in 0..PAGES / 2 {
        rx.set(n * PAGE_SIZE as u64, &seeded(n as u8 + 1)).unwrap();
    }
    if let Ok(pages) = rx.apply(set, full) {
        for p in pages {
            assert_eq!(p.data.len(), PAGE_SIZE);
            assert!(p.gpa < PAGES * PAGE_SIZE as u64 && p.gpa % PAGE_SIZE as u64 == 0);
            assert_eq!(&rx.get(p.gpa)[..], &p.data[..]);
        }
    }
}

fn round_trip(data: &[u8]) {
    for encoding in [
        PageEncoding::XorLz4,
        PageEncoding::XorZstd,
        PageEncoding::Raw,
    ] {
        let mut enc = PageEncoder::new(encoding, ranges()).with_block_pages(3);
        let mut rx = Shadow::new(ranges());
        let mut mem: Vec<Vec<u8>> = (0..PAGES).map(|_| vec![0; PAGE_SIZE]).collect();
        // Each set: a bitmap of dirty pages (2 bytes), then per dirty page one byte saying
        // how it changes and one for where.
        let mut input = data.iter().copied();
        while let (Some(lo), Some(hi)) = (input.next(), input.next()) {
            let dirty = u16::from_le_bytes([lo, hi]);
            let mut batch = enc.batch(Listing::Dirty);
            let mut sent = Vec::new();
            for n in 0..PAGES as usize {
                if dirty & (1 << n) == 0 {
                    continue;
                }
                let how = input.next().unwrap_or(0);
                let at = usize::from(input.next().unwrap_or(0)) * 16;
                match how % 4 {
                    0 => mem[n].fill(0),
                    1 => {}
                    2 => mem[n][at..at + 16].fill(how),
                    _ => mem[n] = seeded(how),
                }
                let gpa = n as u64 * PAGE_SIZE as u64;
                batch.push(gpa, &mem[n]).unwrap();
                sent.push((gpa, mem[n].clone()));
            }
            let set = batch.finish().unwrap();
            let got = rx.apply(set, false).unwrap();
            assert_eq!(got.len(), sent.len());
            for (p, (gpa, d)) in got.iter().zip(&sent) {
                assert_eq!((p.gpa, &p.data), (*gpa, d));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((m, rest)) if m % 3 == 0 => round_trip(rest),
        Some((m, rest)) => decode(m % 3 == 2, rest),
        None => {}
    }
});
