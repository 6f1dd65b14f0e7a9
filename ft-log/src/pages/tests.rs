use super::*;

const MEM: (u64, u64) = (0, 64 * PAGE_SIZE as u64);

fn ranges() -> Vec<(u64, u64)> {
    vec![MEM]
}

/// A small deterministic generator (no test depends on the host's randomness).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE_SIZE]
}

/// A page like kernel data: mostly structure, a few words changed.
fn tweak(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut p = base.to_vec();
    for _ in 0..4 {
        let at = (rng.next() as usize) % (PAGE_SIZE - 8);
        p[at..at + 8].copy_from_slice(&rng.next().to_le_bytes());
    }
    p
}

fn encode(enc: &mut PageEncoder, listing: Listing, pages: &[(u64, Vec<u8>)]) -> PageSet {
    let mut b = enc.batch(listing);
    for (gpa, data) in pages {
        b.push(*gpa, data).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn dirty_pages_round_trip_over_many_deltas() {
    for encoding in [
        PageEncoding::XorLz4,
        PageEncoding::XorZstd,
        PageEncoding::Raw,
    ] {
        let mut rng = Rng(7);
        let mut enc = PageEncoder::new(encoding, ranges());
        let mut rx = Shadow::new(ranges());
        let mut mem: Vec<Vec<u8>> = (0..64).map(|_| page(0)).collect();
        for round in 0..20 {
            let mut pages = Vec::new();
            for n in (round % 3..64).step_by(3) {
                let data = match rng.next() % 4 {
                    0 => page(0),
                    1 => mem[n].clone(), // dirty but written back as it was
                    _ => tweak(&mem[n], &mut rng),
                };
                mem[n] = data.clone();
                pages.push((n as u64 * PAGE_SIZE as u64, data));
            }
            let set = encode(&mut enc, Listing::Dirty, &pages);
            let got = rx.apply(set, false).unwrap();
            let want: Vec<Page> = pages
                .into_iter()
                .map(|(gpa, data)| Page { gpa, data })
                .collect();
            assert_eq!(got, want, "{encoding:?} round {round}");
        }
    }
}

#[test]
fn zero_and_unchanged_pages_carry_no_payload() {
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, ranges());
    enc.seed(0, &page(5)).unwrap();
    enc.seed(0x1000, &page(6)).unwrap();
    let set = encode(
        &mut enc,
        Listing::Dirty,
        &[(0, page(5)), (0x1000, page(0)), (0x2000, page(0))],
    );
    let PageSet::Xor(x) = set else { panic!("raw") };
    assert!(x.blocks.is_empty());
    assert_eq!(
        x.pages,
        vec![
            (0, PageKind::Unchanged),
            (1, PageKind::Zero),
            (2, PageKind::Unchanged)
        ]
    );
    // Left out where the receiver's memory is its copy.
    let set = encode(
        &mut enc,
        Listing::Changed,
        &[(0, page(5)), (0x3000, page(0))],
    );
    assert!(set.is_empty());
}

#[test]
fn a_small_change_is_small() {
    let mut rng = Rng(3);
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, ranges());
    let mut base = vec![0u8; PAGE_SIZE];
    for (i, b) in base.iter_mut().enumerate() {
        *b = (rng.next() as u8).wrapping_add(i as u8);
    }
    enc.seed(0, &base).unwrap();
    let set = encode(&mut enc, Listing::Dirty, &[(0, tweak(&base, &mut rng))]);
    let PageSet::Xor(x) = set else { panic!("raw") };
    let bytes: usize = x.blocks.iter().map(|b| b.len()).sum();
    assert!(bytes < 200, "{bytes} bytes for 32 changed bytes");
}

#[test]
fn full_checkpoint_sends_only_changes_and_restores_everything() {
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, ranges());
    let mut rx = Shadow::new(ranges());
    for n in 0..10u64 {
        enc.seed(n * 0x1000, &page(n as u8 + 1)).unwrap();
        rx.set(n * 0x1000, &page(n as u8 + 1)).unwrap();
    }
    let mut all: Vec<(u64, Vec<u8>)> = (0..64u64)
        .map(|n| (n * 0x1000, page(if n < 10 { n as u8 + 1 } else { 0 })))
        .collect();
    all[3].1 = page(0); // one page cleared, one changed, one new
    all[4].1 = page(99);
    all[20].1 = page(7);
    let set = encode(&mut enc, Listing::Full, &all);
    assert_eq!(set.len(), 3);
    let got = rx.apply(set, true).unwrap();
    let want: Vec<Page> = all
        .into_iter()
        .filter(|(_, d)| d.iter().any(|&b| b != 0))
        .map(|(gpa, data)| Page { gpa, data })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_drifted_copy_is_an_error_not_a_corrupt_page() {
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, ranges());
    let mut rx = Shadow::new(ranges());
    enc.seed(0, &page(1)).unwrap();
    rx.set(0, &page(2)).unwrap(); // drifted
    let set = encode(&mut enc, Listing::Dirty, &[(0, page(3))]);
    assert!(matches!(
        rx.apply(set, false),
        Err(PageCodecError::Drift { .. })
    ));
    // A full checkpoint against a drifted copy also fails, and leaves the copy as it was.
    let mut all: Vec<(u64, Vec<u8>)> = (0..64u64).map(|n| (n * 0x1000, page(0))).collect();
    all[0].1 = page(3); // unchanged for the sender: not sent, the drift stays
    all[1].1 = page(4);
    let set = encode(&mut enc, Listing::Full, &all);
    assert!(matches!(
        rx.apply(set, true),
        Err(PageCodecError::Drift { .. })
    ));
    assert_eq!(rx.get(0x1000)[..], page(0)[..]);
    assert_eq!(rx.get(0)[..], page(2)[..]);
}

#[test]
fn transfer_rounds_decode_onto_memory() {
    let mut rng = Rng(11);
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, ranges());
    let mut mem: Vec<Vec<u8>> = (0..64).map(|_| page(0)).collect();
    let mut src: Vec<Vec<u8>> = (0..64).map(|i| page(i as u8)).collect();
    for round in 0..4 {
        let pages: Vec<(u64, Vec<u8>)> = src
            .iter()
            .enumerate()
            .map(|(n, d)| (n as u64 * 0x1000, d.clone()))
            .collect();
        let set = encode(&mut enc, Listing::Changed, &pages);
        for p in decode_onto(set, 64, |gpa, buf| {
            buf.copy_from_slice(&mem[(gpa / 0x1000) as usize]);
            Ok(())
        })
        .unwrap()
        {
            mem[(p.gpa / 0x1000) as usize] = p.data;
        }
        assert_eq!(mem, src, "round {round}");
        for n in (round..64).step_by(5) {
            src[n] = tweak(&src[n], &mut rng);
        }
    }
}

/// A set encoded from real-looking pages, for the damage tests.
fn sample() -> (XorPages, Shadow) {
    let mut rng = Rng(5);
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, ranges()).with_block_pages(2);
    let pages: Vec<(u64, Vec<u8>)> = (0..5u64)
        .map(|n| (n * 0x1000, tweak(&page(n as u8), &mut rng)))
        .collect();
    let PageSet::Xor(x) = encode(&mut enc, Listing::Dirty, &pages) else {
        panic!("raw")
    };
    assert_eq!(x.blocks.len(), 3);
    (x, Shadow::new(ranges()))
}

#[test]
fn damaged_sets_are_refused() {
    let (x, rx) = sample();
    let cases: Vec<(&str, XorPages)> = vec![
        ("cut block", {
            let mut y = x.clone();
            let b = y.blocks[1].to_vec();
            y.blocks[1] = serde_bytes::ByteBuf::from(b[..b.len() / 2].to_vec());
            y
        }),
        ("missing block", {
            let mut y = x.clone();
            y.blocks.pop();
            y
        }),
        ("extra block", {
            let mut y = x.clone();
            y.blocks.push(y.blocks[0].clone());
            y
        }),
        ("block too big", {
            let mut y = x.clone();
            y.blocks[2] = y.blocks[0].clone(); // two pages where one belongs
            y
        }),
        (
            "zero block size",
            XorPages {
                block_pages: 0,
                ..x.clone()
            },
        ),
        (
            "huge block size",
            XorPages {
                block_pages: 60000,
                ..x.clone()
            },
        ),
        ("out of order", {
            let mut y = x.clone();
            y.pages.swap(0, 1);
            y
        }),
        ("twice", {
            let mut y = x.clone();
            y.pages[1].0 = y.pages[0].0;
            y
        }),
        ("outside memory", {
            let mut y = x.clone();
            y.pages[4].0 = 1 << 40;
            y
        }),
        ("address overflows", {
            let mut y = x.clone();
            y.pages[4].0 = u64::MAX;
            y
        }),
        (
            "wrong crc",
            XorPages {
                crc32: x.crc32 ^ 1,
                ..x.clone()
            },
        ),
        (
            "zstd label on lz4 data",
            XorPages {
                compressor: Compressor::Zstd,
                ..x.clone()
            },
        ),
        ("too many pages", {
            let mut y = x.clone();
            y.pages = (0..65).map(|n| (n, PageKind::Zero)).collect();
            y.blocks.clear();
            y
        }),
    ];
    for (what, y) in cases {
        let mut r = rx.clone();
        assert!(r.apply(PageSet::Xor(y), false).is_err(), "{what}");
        assert_eq!(r.non_zero_pages(), 0, "{what}: the copy changed");
    }
    let mut r = rx.clone();
    assert!(r.apply(PageSet::Xor(x), false).is_ok());
}

#[test]
fn random_bytes_never_panic() {
    let (x, rx) = sample();
    let mut rng = Rng(99);
    for _ in 0..2000 {
        let mut y = x.clone();
        let b = (rng.next() % 3) as usize;
        let mut block = y.blocks[b].to_vec();
        let at = (rng.next() as usize) % block.len();
        block[at] = rng.next() as u8;
        if rng.next().is_multiple_of(4) {
            block.truncate(at);
        }
        y.blocks[b] = serde_bytes::ByteBuf::from(block);
        let _ = rx.clone().apply(PageSet::Xor(y), false);
    }
}

#[test]
fn raw_pages_are_checked() {
    let mut rx = Shadow::new(ranges());
    let bad = PageSet::Raw(vec![Page {
        gpa: 0,
        data: vec![1; 10],
    }]);
    assert!(matches!(
        rx.apply(bad, false),
        Err(PageCodecError::PageLength { len: 10 })
    ));
    let outside = PageSet::Raw(vec![Page {
        gpa: 1 << 30,
        data: page(1),
    }]);
    assert!(rx.apply(outside, false).is_err());
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, ranges());
    assert!(enc.batch(Listing::Dirty).push(0x10, &page(1)).is_err());
    let mut b = enc.batch(Listing::Dirty);
    b.push(0x2000, &page(1)).unwrap();
    assert!(matches!(
        b.push(0x1000, &page(1)),
        Err(PageCodecError::Order { .. })
    ));
}

#[test]
fn encoding_names() {
    for e in [
        PageEncoding::Raw,
        PageEncoding::XorLz4,
        PageEncoding::XorZstd,
    ] {
        assert_eq!(PageEncoding::from_name(e.name()), Some(e));
    }
    assert_eq!(PageEncoding::from_name("gzip"), None);
}
