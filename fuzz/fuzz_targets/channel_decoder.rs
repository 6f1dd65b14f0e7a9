//! Both directions of the logging channel (`MessageDecoder<ToBackup>` and
//! `MessageDecoder<ToPrimary>`) on arbitrary bytes cut into arbitrary pieces.
//!
//! Each side decodes what its peer sends, and the peer may be anything that reached the
//! port, so no input may panic either decoder. Checked besides (see
//! `ftvm_fuzz::check_stream`): every message re-encodes to the frame it came from, an
//! error is final, and `buffered` counts exactly the bytes pushed but not consumed.

#![no_main]

use ft_log::channel::CHANNEL_HEADER_LEN;
use ft_log::{encode_message, MessageDecoder, ToBackup, ToPrimary};
use ftvm_fuzz::{check_stream, Chunking};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Chunking::split(data);
    let to_backup = MessageDecoder::<ToBackup>::new();
    check_stream(
        to_backup,
        &input,
        CHANNEL_HEADER_LEN,
        encode_message,
        "ToBackup",
    );
    let to_primary = MessageDecoder::<ToPrimary>::new();
    check_stream(
        to_primary,
        &input,
        CHANNEL_HEADER_LEN,
        encode_message,
        "ToPrimary",
    );
});
