//! Compare page encodings on the deltas of a recorded log (one written with
//! `ftvm record --page-encoding raw`): bytes out and encode/decode time of each, side by
//! side over the same pages. Used to choose the compressor and block size (README).
//!
//! Usage: cargo run --release -p ft-log --example page_codec_compare -- LOG [MEM_MIB]
//!
//! The copies start all zeros (the log does not hold the memory the recording started
//! from), so a page's first appearance is compressed whole; ftvm itself starts both
//! copies from that memory and does better. Full checkpoints are encoded as their listed
//! pages.

use std::io::Read;
use std::time::{Duration, Instant};

use ft_log::pages::{Listing, PageEncoder, PageEncoding, PageSet, Shadow, PAGE_SIZE};
use ft_log::{Decoder, Entry, Page};

struct Variant {
    name: String,
    enc: PageEncoder,
    rx: Shadow,
    bytes: u64,
    encode: Duration,
    decode: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: page_codec_compare LOG [MEM_MIB]")?;
    let mib: u64 = args.next().map_or(Ok(256), |m| m.parse())?;
    let ranges = vec![(0u64, mib << 20)];
    let mut variants: Vec<Variant> = Vec::new();
    for (encoding, blocks) in [
        (PageEncoding::XorLz4, [1usize, 16, 64, 256].as_slice()),
        (PageEncoding::XorZstd, [1usize, 64, 256].as_slice()),
    ] {
        for &b in blocks {
            variants.push(Variant {
                name: format!("{} block {b}", encoding.name()),
                enc: PageEncoder::new(encoding, ranges.clone()).with_block_pages(b),
                rx: Shadow::new(ranges.clone()),
                bytes: 0,
                encode: Duration::ZERO,
                decode: Duration::ZERO,
            });
        }
    }
    let (mut raw_bytes, mut lz4_only, mut lz4_only_time) = (0u64, 0u64, Duration::ZERO);
    let (mut deltas, mut pages_total) = (0u64, 0u64);
    // vCPU and device state of the deltas: as logged, lz4, XOR with the previous then lz4.
    let (mut state, mut state_lz4, mut state_xor_lz4) = (0u64, 0u64, 0u64);
    let mut prev_state: Vec<u8> = Vec::new();
    let mut dec = Decoder::new();
    let mut file = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        while let Some(entry) = dec.next_entry()? {
            let Entry::Delta(d) = entry else { continue };
            let mut st = d.vcpu.clone();
            st.extend_from_slice(&d.devices);
            state += st.len() as u64;
            state_lz4 += lz4_flex::block::compress(&st).len() as u64;
            if prev_state.len() == st.len() {
                let x: Vec<u8> = st.iter().zip(&prev_state).map(|(a, b)| a ^ b).collect();
                state_xor_lz4 += lz4_flex::block::compress(&x).len() as u64;
            } else {
                state_xor_lz4 += lz4_flex::block::compress(&st).len() as u64;
            }
            prev_state = st;
            let Some(pages) = d.pages.decoded() else {
                return Err("the log's pages are not raw: record with --page-encoding raw".into());
            };
            let mut pages: Vec<&Page> = pages.iter().collect();
            pages.sort_by_key(|p| p.gpa);
            deltas += 1;
            pages_total += pages.len() as u64;
            raw_bytes += (pages.len() * (PAGE_SIZE + 8)) as u64;
            // lz4 of the whole pages, no XOR, 64 pages a block.
            let t = Instant::now();
            for chunk in pages.chunks(64) {
                let mut block = Vec::with_capacity(chunk.len() * PAGE_SIZE);
                for p in chunk {
                    block.extend_from_slice(&p.data);
                }
                lz4_only += lz4_flex::block::compress(&block).len() as u64;
            }
            lz4_only_time += t.elapsed();
            for v in &mut variants {
                let t = Instant::now();
                let mut batch = v.enc.batch(Listing::Dirty);
                for p in &pages {
                    batch.push(p.gpa, &p.data)?;
                }
                let set = batch.finish()?;
                v.encode += t.elapsed();
                v.bytes += match &set {
                    PageSet::Xor(x) => {
                        x.blocks.iter().map(|b| b.len() as u64).sum::<u64>()
                            + x.pages.len() as u64 * 4
                    }
                    PageSet::Raw(_) => 0,
                };
                let t = Instant::now();
                let out = v.rx.apply(set, false)?;
                v.decode += t.elapsed();
                assert_eq!(out.len(), pages.len());
            }
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dec.push(&buf[..n]);
    }
    println!("{deltas} deltas, {pages_total} pages, raw {raw_bytes} bytes");
    println!(
        "vCPU and device state: {state} bytes as logged, {state_lz4} lz4, {state_xor_lz4} XOR with the previous delta's then lz4"
    );
    let mb = |b: u64| b as f64 / 1e6;
    let rate = |d: Duration| mb(pages_total * PAGE_SIZE as u64) / d.as_secs_f64().max(1e-9);
    println!(
        "{:<22} {:>12} {:>8} {:>12} {:>12}",
        "encoding", "bytes", "ratio", "enc MB/s", "dec MB/s"
    );
    println!(
        "{:<22} {:>12} {:>8.1} {:>12.0} {:>12}",
        "lz4, no xor, block 64",
        lz4_only,
        raw_bytes as f64 / lz4_only.max(1) as f64,
        rate(lz4_only_time),
        "-"
    );
    for v in &variants {
        println!(
            "{:<22} {:>12} {:>8.1} {:>12.0} {:>12.0}",
            v.name,
            v.bytes,
            raw_bytes as f64 / v.bytes.max(1) as f64,
            rate(v.encode),
            rate(v.decode)
        );
    }
    Ok(())
}
