//! The log decoder (`ft_log::Decoder`) on arbitrary bytes cut into arbitrary pieces.
//!
//! A backup decodes a log that arrives from the network and a replayer one read from a
//! file, so no input may panic it. Checked besides (see `ftvm_fuzz::check_stream`): every
//! entry decoded re-encodes to the frame it came from, and an error is final.

#![no_main]

use ft_log::codec::HEADER_LEN;
use ft_log::{encode_entry, Decoder};
use ftvm_fuzz::{check_stream, Chunking};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Chunking::split(data);
    check_stream(
        Decoder::new(),
        &input,
        HEADER_LEN,
        encode_entry,
        "log entry",
    );
});
