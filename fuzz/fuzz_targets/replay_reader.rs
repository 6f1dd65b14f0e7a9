//! The replayer's entry reader (`ftvm::replay::Replayer`: peek and pop over a log read
//! from a file or, live, from the primary) on arbitrary bytes delivered in arbitrary
//! pieces.
//!
//! Checked against a plain `ft_log::Decoder` over the whole stream: the replayer hands out
//! exactly the entries the decoder finds, in order, `peek(i)` shows the entry `pop` will
//! give `i` steps later, and it ends as the decoder does: with the decoder's error, or a
//! cut-short last frame refused from a file and dropped from a live primary.
//!
//! Input: the chunking prefix of `ftvm_fuzz::Chunking`; bit 7 of its first byte picks the
//! live mode.

#![no_main]

use std::sync::Arc;

use ft_log::{Decoder, Entry};
use ftvm::replay::Replayer;
use ftvm_fuzz::{Chunking, PieceReader};
use libfuzzer_sys::fuzz_target;

/// What a plain decoder makes of the whole stream: the entries, and whether it ends
/// cleanly, cut inside a frame, or at an error.
fn model(stream: &[u8]) -> (Vec<Entry>, Result<(), bool>) {
    let mut d = Decoder::new();
    d.push(stream);
    let mut entries = Vec::new();
    loop {
        match d.next_entry() {
            Ok(Some(e)) => entries.push(e),
            Ok(None) => return (entries, d.finish().map_err(|_| true)),
            Err(_) => return (entries, Err(false)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let live = data.first().is_some_and(|b| b & 0x80 != 0);
    let input = Chunking::split(data);
    let (entries, end) = model(input.stream);
    // No interrupted reads: the replayer's sources (a file, the channel's pipe) never
    // return them.
    let source = Box::new(PieceReader::new(input.chunks(), false));
    let mut r = if live {
        Replayer::live(source, Arc::default())
    } else {
        Replayer::new(source)
    };
    let mut popped = 0usize;
    loop {
        let ahead = popped % 3;
        match r.peek(ahead) {
            Ok(Some(e)) => assert_eq!(Some(e), entries.get(popped + ahead), "peek({ahead})"),
            Ok(None) => assert!(popped + ahead >= entries.len(), "peek ended early"),
            Err(_) => assert!(popped + ahead >= entries.len() && end.is_err()),
        }
        match r.pop() {
            Ok(Some(e)) => {
                assert_eq!(Some(&e), entries.get(popped), "pop {popped}");
                popped += 1;
            }
            Ok(None) => {
                assert_eq!(popped, entries.len(), "log ended early");
                // A file cut inside a frame is an error; a live log drops that frame.
                assert!(end.is_ok() || (live && end == Err(true)), "damage ignored");
                break;
            }
            Err(_) => {
                assert_eq!(popped, entries.len(), "error before the last entry");
                assert!(end.is_err(), "error on a clean log");
                assert!(r.pop().is_err(), "error not repeated");
                break;
            }
        }
    }
    assert_eq!(r.popped(), popped as u64);
});
