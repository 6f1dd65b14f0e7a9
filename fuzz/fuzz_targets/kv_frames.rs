//! The key/value service's wire format (guest-images/kv/src/protocol.rs): frames read off
//! a connection that delivers arbitrary bytes in arbitrary pieces, each payload decoded
//! as a `Request` and as a `Response`, and client operations size-checked.
//!
//! Anything can connect to the service's ports, so no input may panic it. Checked besides:
//! a decoded message re-encodes to the payload it came from (up to bincode's non-canonical
//! integers) and `read_frame` never hands out more than `MAX_FRAME` bytes.

#![no_main]

use std::io::{self, Read};

use ftvm_fuzz::{assert_reencodes, Chunking};
use ftvm_kv::protocol::{check_op_size, decode, encode, read_frame, Request, Response, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

/// A connection that delivers the stream in the input's pieces, one per `read`, and
/// sometimes an interrupted read first (which the reader must retry).
struct Pieces<'a> {
    pieces: Vec<&'a [u8]>,
    next: usize,
    /// Bytes of the current piece already delivered.
    used: usize,
    interrupted: bool,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(piece) = self.pieces.get(self.next) else {
            return Ok(0);
        };
        if !self.interrupted && piece.first() == Some(&0xee) {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        let rest = &piece[self.used..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.used += n;
        if self.used == piece.len() {
            self.next += 1;
            self.used = 0;
            self.interrupted = false;
        }
        Ok(n)
    }
}

fn check_request(r: &Request) {
    match r {
        Request::Client(op) | Request::Forward { op, .. } => {
            let _ = check_op_size(&op.op);
            let _ = (op.op.key(), op.op.is_write());
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Chunking::split(data);
    let mut conn = Pieces {
        pieces: input.chunks(),
        next: 0,
        used: 0,
        interrupted: false,
    };
    // Bounded: every frame consumes at least its 4-byte length. Any error (closed, too
    // large, cut short) drops the connection.
    while let Ok(payload) = read_frame(&mut conn) {
        assert!(payload.len() <= MAX_FRAME);
        if let Ok(req) = decode::<Request>(&payload) {
            check_request(&req);
            let again = encode(&req).expect("a decoded request encodes");
            assert_reencodes(&payload, &again, "Request");
        }
        if let Ok(resp) = decode::<Response>(&payload) {
            let again = encode(&resp).expect("a decoded response encodes");
            assert_reencodes(&payload, &again, "Response");
        }
    }
});
