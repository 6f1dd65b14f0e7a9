//! The log decoder (`ft_log::Decoder`) on arbitrary bytes cut into arbitrary pieces.
//!
//! A backup decodes a log that arrives from the network and a replayer one read from a
//! file, so no input may panic it. Checked besides: every entry decoded re-encodes to the
//! frame it came from (up to bincode's non-canonical integers, see `assert_reencodes`),
//! and an error is final: the decoder repeats it, whatever arrives after.

#![no_main]

use ft_log::codec::HEADER_LEN;
use ft_log::{encode_entry, Decoder};
use ftvm_fuzz::{assert_reencodes, Chunking};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Chunking::split(data);
    let stream = input.stream;
    let mut d = Decoder::new();
    let mut error = None;
    for piece in input.chunks() {
        d.push(piece);
        if let Some(e) = &error {
            assert_eq!(d.next_entry().as_ref(), Err(e), "error not repeated");
            continue;
        }
        loop {
            let before = d.consumed() as usize;
            match d.next_entry() {
                Ok(Some(entry)) => {
                    let after = d.consumed() as usize;
                    // The first entry's bytes include the stream header.
                    let frame = &stream[before.max(HEADER_LEN)..after];
                    assert_reencodes(frame, &encode_entry(&entry), "log entry");
                    assert!(d.frames() > 0);
                }
                Ok(None) => break,
                Err(e) => {
                    // Only the stream header may have gone (checked in the same call).
                    let now = d.consumed() as usize;
                    assert!(
                        now == before || (before == 0 && now == HEADER_LEN),
                        "a bad frame was consumed ({before} -> {now})"
                    );
                    error = Some(e);
                    break;
                }
            }
        }
    }
    // The end of the input is the end of the stream: only a clean cut may pass.
    if error.is_none() && d.finish().is_ok() {
        assert_eq!(d.consumed() as usize, stream.len());
    }
});
