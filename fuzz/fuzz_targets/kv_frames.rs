//! The key/value service's wire format (guest-images/kv/src/protocol.rs): frames read off
//! a connection that delivers arbitrary bytes in arbitrary pieces, each payload decoded
//! as a `Request` and as a `Response`, and client operations size-checked.
//!
//! Anything can connect to the service's ports, so no input may panic it. Checked besides:
//! a decoded message survives encoding and decoding again unchanged, its encoding is no
//! longer than the payload read, and `read_frame` never hands out more than `MAX_FRAME`
//! bytes. (Byte equality, as for ft-log, does not hold: a snapshot's maps decode from
//! keys in any order and with duplicates, and encode sorted and unique.)

#![no_main]

use ftvm_fuzz::{Chunking, PieceReader};
use ftvm_kv::protocol::{check_op_size, decode, encode, read_frame, Request, Response, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fn check_round_trip<T>(payload: &[u8], msg: &T, what: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let again = encode(msg).unwrap_or_else(|e| panic!("{what}: a decoded message encodes: {e}"));
    assert!(
        again.len() <= payload.len(),
        "{what}: re-encoding is longer"
    );
    let back: T = decode(&again).unwrap_or_else(|e| panic!("{what}: re-encoding decodes: {e}"));
    assert_eq!(&back, msg, "{what}: changed by a round trip");
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
    let mut conn = PieceReader::new(input.chunks(), true);
    // Bounded: every frame consumes at least its 4-byte length. Any error (closed, too
    // large, cut short) drops the connection.
    while let Ok(payload) = read_frame(&mut conn) {
        assert!(payload.len() <= MAX_FRAME);
        if let Ok(req) = decode::<Request>(&payload) {
            check_request(&req);
            check_round_trip(&payload, &req, "Request");
        }
        if let Ok(resp) = decode::<Response>(&payload) {
            check_round_trip(&payload, &resp, "Response");
        }
    }
});
