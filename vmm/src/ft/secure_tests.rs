//! The secure channel over real loopback sockets: what a peer without the key, a
//! tampering middlebox, a replayed recording and a trickling peer get.

use super::*;
use std::net::TcpListener;
use std::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(5);

fn key(b: u8) -> ChannelKey {
    ChannelKey::from_bytes([b; super::super::key::KEY_LEN])
}

/// A connected pair of plain sockets.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Handshake both ends on `c` (connecting) and `s` (accepting), with keys `kc` and `ks`.
fn handshake(
    c: TcpStream,
    s: TcpStream,
    kc: ChannelKey,
    ks: ChannelKey,
) -> (
    Result<SecureStream, SecureError>,
    Result<SecureStream, SecureError>,
) {
    let server = std::thread::spawn(move || SecureStream::accept(s, &ks, LIMIT));
    let client = SecureStream::connect(c, &kc, LIMIT);
    (client, server.join().unwrap())
}

/// A middlebox between a client and `to`: forwards both ways, records the client's bytes,
/// and lets `tamper` change them (given their offset in the client's stream).
fn middlebox(
    to: std::net::SocketAddr,
    tamper: impl Fn(u64, &mut [u8]) + Send + 'static,
) -> (std::net::SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut a, _) = l.accept().unwrap();
        let mut b = TcpStream::connect(to).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
            let _ = a2.shutdown(Shutdown::Write);
        });
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = a.read(&mut buf) {
            if n == 0 {
                break;
            }
            tamper(seen.len() as u64, &mut buf[..n]);
            seen.extend_from_slice(&buf[..n]);
            if b.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = b.shutdown(Shutdown::Write);
        let _ = tx.send(seen);
    });
    (addr, rx)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn both_directions_carry_large_data_and_hide_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (via, seen) = middlebox(l.local_addr().unwrap(), |_, _| {});
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut s = SecureStream::accept(s, &key(1), LIMIT).unwrap();
        let mut got = vec![0u8; 1 << 20];
        s.read_exact(&mut got).unwrap();
        s.write_all(b"thanks").unwrap();
        got
    });
    let mut c = SecureStream::connect(TcpStream::connect(via).unwrap(), &key(1), LIMIT).unwrap();
    let data = pattern(1 << 20);
    // From a clone, as the VMM's sender thread does.
    c.try_clone().unwrap().write_all(&data).unwrap();
    let mut reply = [0u8; 6];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"thanks");
    assert_eq!(server.join().unwrap(), data);
    drop(c);
    let wire = seen.recv_timeout(LIMIT).unwrap();
    assert!(wire.len() > 1 << 20, "{} bytes on the wire", wire.len());
    // No 64-byte run of the plaintext crosses the wire.
    assert!(!wire.windows(64).any(|w| w == &data[4096..4160]));
}

#[test]
fn a_peer_without_the_key_is_refused_on_both_sides() {
    let (c, s) = tcp_pair();
    let (client, server) = handshake(c, s, key(1), key(2));
    assert!(
        matches!(server, Err(SecureError::Refused(_))),
        "{server:?}",
        server = server.as_ref().err()
    );
    // The accepting side answered nothing: the connecting side sees the close.
    assert!(client.is_err());

    // A primary impostor (accepts with the wrong key) is refused by the connecting side.
    let (c, s) = tcp_pair();
    let mut s2 = s.try_clone().unwrap();
    let impostor = std::thread::spawn(move || {
        let mut first = [0u8; 2 + HANDSHAKE_LEN];
        s2.read_exact(&mut first).unwrap();
        let mut hs = builder(&key(9)).unwrap().build_responder().unwrap();
        // It cannot even read the first message; it answers with its own guess.
        assert!(hs.read_message(&first[2..], &mut []).is_err());
        let mut fake = [0u8; 2 + HANDSHAKE_LEN];
        fake[..2].copy_from_slice(&(HANDSHAKE_LEN as u16).to_be_bytes());
        fake[2..].copy_from_slice(&[0x5a; HANDSHAKE_LEN]);
        s2.write_all(&fake).unwrap();
        s
    });
    let client = SecureStream::connect(c, &key(1), LIMIT);
    assert!(matches!(client, Err(SecureError::Refused(_))));
    drop(impostor.join().unwrap());
}

#[test]
fn a_flipped_byte_is_detected_and_sticks() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // Past the handshake (50 bytes) and the first record's prefix: inside its ciphertext.
    let (via, _) = middlebox(l.local_addr().unwrap(), |at, buf| {
        let target = 2 + HANDSHAKE_LEN as u64 + 2 + 10;
        if (at..at + buf.len() as u64).contains(&target) {
            buf[(target - at) as usize] ^= 0x01;
        }
    });
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut s = SecureStream::accept(s, &key(1), LIMIT).unwrap();
        let mut buf = [0u8; 100];
        let first = s.read(&mut buf).unwrap_err();
        let again = s.read(&mut buf).unwrap_err();
        (first, again)
    });
    let mut c = SecureStream::connect(TcpStream::connect(via).unwrap(), &key(1), LIMIT).unwrap();
    c.write_all(b"release all output up to exit 18446744073709551615")
        .unwrap();
    let (first, again) = server.join().unwrap();
    for e in [first, again] {
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("record 0"), "{e}");
    }
}

#[test]
fn a_recorded_session_replayed_later_is_refused() {
    // Record a real session's client bytes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (via, seen) = middlebox(l.local_addr().unwrap(), |_, _| {});
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut s = SecureStream::accept(s, &key(1), LIMIT).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    let mut c = SecureStream::connect(TcpStream::connect(via).unwrap(), &key(1), LIMIT).unwrap();
    c.write_all(b"hello").unwrap();
    assert_eq!(&server.join().unwrap(), b"hello");
    drop(c);
    let recording = seen.recv_timeout(LIMIT).unwrap();

    // Play it to a fresh listener holding the same key.
    let (mut raw, s) = tcp_pair();
    raw.write_all(&recording).unwrap();
    let mut s = SecureStream::accept(s, &key(1), LIMIT).unwrap();
    let mut buf = [0u8; 5];
    let e = s.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

#[test]
fn a_repeated_record_is_refused() {
    let (c, s) = tcp_pair();
    let (client, server) = handshake(c, s, key(3), key(3));
    let (mut c, mut s) = (client.unwrap(), server.unwrap());
    // Seal one record by hand, send it twice.
    let mut record = vec![0u8; 2 + 3 + TAG_LEN];
    let n = c
        .session
        .transport
        .write_message(0, b"ack", &mut record[2..])
        .unwrap();
    record[..2].copy_from_slice(&(n as u16).to_be_bytes());
    (&c.tcp).write_all(&record).unwrap();
    (&c.tcp).write_all(&record).unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ack");
    assert_eq!(
        s.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    let _ = c.flush();
}

#[test]
fn a_trickling_peer_cannot_stretch_the_handshake() {
    let (mut c, s) = tcp_pair();
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            if c.write_all(&[0]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let t = Instant::now();
    let limit = Duration::from_millis(300);
    let r = SecureStream::accept(s, &key(1), limit);
    assert!(matches!(
        r,
        Err(SecureError::Timeout(_)) | Err(SecureError::HandshakeLength(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(2));
    trickle.join().unwrap();
}

#[test]
fn a_partial_record_survives_a_read_timeout() {
    let (c, s) = tcp_pair();
    let (client, server) = handshake(c, s, key(4), key(4));
    let (c, mut s) = (client.unwrap(), server.unwrap());
    let mut record = [0u8; 2 + 5 + TAG_LEN];
    let n = c
        .session
        .transport
        .write_message(0, b"hello", &mut record[2..])
        .unwrap();
    record[..2].copy_from_slice(&(n as u16).to_be_bytes());
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    (&c.tcp).write_all(&record[..9]).unwrap();
    let mut buf = [0u8; 5];
    let e = s.read(&mut buf).unwrap_err();
    assert!(crate::ft::deadline::read_timed_out(&e), "{e}");
    (&c.tcp).write_all(&record[9..]).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}
