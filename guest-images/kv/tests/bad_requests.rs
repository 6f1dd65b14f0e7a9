//! Malformed input: garbage bytes, oversized frames and values, unknown request variants,
//! requests for the wrong service. Each gets an error reply or a closed connection, and the
//! servers keep serving everybody else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use ftvm_kv::client::ClientError;
use ftvm_kv::protocol::{
    decode, encode, read_frame, write_frame, ClientOp, ErrorCode, Op, Request, Response, MAX_FRAME,
    MAX_KEY, MAX_VALUE,
};

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn send_raw(s: &mut TcpStream, payload: &[u8]) -> Option<Response> {
    write_frame(s, payload).unwrap();
    read_frame(s).ok().map(|f| decode(&f).unwrap())
}

fn error_code(r: Option<Response>) -> ErrorCode {
    match r {
        Some(Response::Err { code, .. }) => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Whether the server closed the connection (EOF, or a reset).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

fn check_bad_input(addr: &str, also: impl Fn()) {
    // Garbage payload in a well-formed frame: error reply, connection still usable.
    let mut s = connect(addr);
    let code = error_code(send_raw(&mut s, &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x17]));
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(send_raw(&mut s, &encode(&Request::Status).unwrap()).is_some());
    // Unknown request variant.
    let code = error_code(send_raw(&mut s, &[200, 1, 2, 3]));
    assert_eq!(code, ErrorCode::BadRequest);
    // An empty payload.
    let code = error_code(send_raw(&mut s, &[]));
    assert_eq!(code, ErrorCode::BadRequest);
    also();

    // Bytes that are not our framing at all (an HTTP request): the "length" is far above the
    // maximum, so the server answers TooLarge and closes.
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let frame = read_frame(&mut s).expect("an error reply before closing");
    assert!(matches!(
        decode::<Response>(&frame).unwrap(),
        Response::Err {
            code: ErrorCode::TooLarge,
            ..
        }
    ));
    assert!(closed(&mut s));
    // A length just over the maximum.
    let mut s = connect(addr);
    s.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .unwrap();
    assert!(read_frame(&mut s).is_ok());
    assert!(closed(&mut s));
    also();

    // A truncated frame, then the client goes away.
    let mut s = connect(addr);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(&[1, 2, 3]).unwrap();
    drop(s);
    // A connection that sends nothing and stays open does not block others.
    let _idle = connect(addr);
    also();
}

#[test]
fn bad_requests_get_errors_and_servers_keep_serving() {
    let (c, a, b) = Cluster::with_primary_and_backup();
    let mut ck = c.clerk();
    ck.put("k", "v").unwrap();
    let works = || {
        let mut ck = c.clerk();
        ck.append("k", ".").unwrap();
        assert!(ck.get("k").unwrap().starts_with('v'));
    };
    for addr in [&a, &b, &c.vs_addr] {
        check_bad_input(addr, works);
    }

    // Requests for the wrong service.
    let mut s = connect(&c.vs_addr);
    let req = Request::Client(ClientOp {
        client: 1,
        seq: 1,
        op: Op::Get { key: "k".into() },
    });
    assert_eq!(
        error_code(send_raw(&mut s, &encode(&req).unwrap())),
        ErrorCode::BadRequest
    );
    let mut s = connect(&a);
    assert_eq!(
        error_code(send_raw(&mut s, &encode(&Request::GetView).unwrap())),
        ErrorCode::BadRequest
    );
    works();
}

#[test]
fn oversized_keys_and_values_are_refused() {
    let (c, a, _b) = Cluster::with_primary_and_backup();
    let mut ck = c.clerk();
    let big = "x".repeat(MAX_VALUE + 1);
    assert!(matches!(
        ck.put("k", &big),
        Err(ClientError::Refused {
            code: ErrorCode::TooLarge,
            ..
        })
    ));
    assert!(matches!(
        ck.put(&"k".repeat(MAX_KEY + 1), "v"),
        Err(ClientError::Refused {
            code: ErrorCode::TooLarge,
            ..
        })
    ));
    // A value that grows past the maximum through appends.
    let half = "y".repeat(MAX_VALUE / 2 + 10);
    ck.put("k", &half).unwrap();
    assert!(ck.append("k", &half).is_err());
    assert_eq!(ck.get("k").unwrap().len(), half.len());
    // A frame at the maximum size is read, decoded and refused for its value.
    let mut s = connect(&a);
    let req = Request::Client(ClientOp {
        client: 9,
        seq: 1,
        op: Op::Put {
            key: "k".into(),
            value: "z".repeat(MAX_FRAME - 64),
        },
    });
    assert_eq!(
        error_code(send_raw(&mut s, &encode(&req).unwrap())),
        ErrorCode::TooLarge
    );
    ck.put("k", "small").unwrap();
    assert_eq!(ck.get("k").unwrap(), "small");
}
