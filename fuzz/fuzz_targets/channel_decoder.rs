//! Both directions of the logging channel (`MessageDecoder<ToBackup>` and
//! `MessageDecoder<ToPrimary>`) on arbitrary bytes cut into arbitrary pieces.
//!
//! Each side decodes what its peer sends, and the peer may be anything that reached the
//! port, so no input may panic either decoder. Checked besides: every message re-encodes
//! to the frame it came from (up to bincode's non-canonical integers), an error is final,
//! and `buffered` counts exactly the bytes pushed but not consumed.

#![no_main]

use ft_log::channel::CHANNEL_HEADER_LEN;
use ft_log::{encode_message, MessageDecoder, ToBackup, ToPrimary};
use ftvm_fuzz::{assert_reencodes, Chunking};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn run<M: DeserializeOwned + Serialize + std::fmt::Debug>(input: &Chunking<'_>, what: &str) {
    let stream = input.stream;
    let mut d = MessageDecoder::<M>::new();
    let mut pushed = 0usize;
    let mut error = None;
    for piece in input.chunks() {
        d.push(piece);
        pushed += piece.len();
        if let Some(e) = &error {
            assert_eq!(
                d.next_message().err().as_ref(),
                Some(e),
                "{what}: error not repeated"
            );
            continue;
        }
        loop {
            let before = d.consumed() as usize;
            match d.next_message() {
                Ok(Some(m)) => {
                    let after = d.consumed() as usize;
                    let frame = &stream[before.max(CHANNEL_HEADER_LEN)..after];
                    assert_reencodes(frame, &encode_message(&m), what);
                }
                Ok(None) => break,
                Err(e) => {
                    // Only the stream header may have gone (checked in the same call).
                    let now = d.consumed() as usize;
                    assert!(
                        now == before || (before == 0 && now == CHANNEL_HEADER_LEN),
                        "{what}: a bad frame was consumed ({before} -> {now})"
                    );
                    error = Some(e);
                    break;
                }
            }
        }
        assert_eq!(
            d.buffered() + d.consumed() as usize,
            pushed,
            "{what}: bytes lost"
        );
    }
    if error.is_none() && d.finish().is_ok() {
        assert_eq!(d.consumed() as usize, stream.len(), "{what}");
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Chunking::split(data);
    run::<ToBackup>(&input, "ToBackup");
    run::<ToPrimary>(&input, "ToPrimary");
});
