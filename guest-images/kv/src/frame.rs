//! Framing and encoding: every message is one *frame*, a 4-byte big-endian payload length
//! followed by the payload, a [`Request`](crate::protocol::Request) or
//! [`Response`](crate::protocol::Response) encoded with bincode (serde, standard
//! configuration). The message types are in [`crate::protocol`], which re-exports this.
//!
//! A frame longer than [`MAX_FRAME`] is refused before its payload is read. A payload is read
//! as it arrives: the buffer grows with the bytes received, never to the announced length up
//! front, so a peer announcing 16 MiB and sending ten bytes costs ten bytes. Over a socket
//! the whole frame must arrive within a deadline of its first byte ([`read_frame_within`]),
//! so a peer that trickles bytes cannot hold a connection, nor its thread, for longer.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Largest frame payload accepted, in bytes. A full state transfer must fit in one frame,
/// which is why the store itself is capped at [`MAX_STORE_BYTES`](crate::protocol::MAX_STORE_BYTES).
pub const MAX_FRAME: usize = 16 << 20;
/// Errors of the framing and encoding layer.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer closed the connection cleanly before a frame began.
    #[error("connection closed")]
    Closed,
    /// A payload, announced or to be sent, is over [`MAX_FRAME`] (its length in bytes).
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    TooLarge(usize),
    /// Reading or writing failed: a connection closed mid-frame, a timeout before a frame
    /// began, a reset.
    #[error("i/o error")]
    Io(#[from] io::Error),
    /// A payload is not exactly one valid message (the decoder's explanation).
    #[error("cannot decode message: {0}")]
    Decode(String),
    /// A message could not be encoded (the encoder's explanation).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A frame begun in [`read_frame_within`] did not complete within its limit (carried).
    #[error("frame not complete within {0:?} of its first byte")]
    Deadline(Duration),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes a message into a frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let bytes = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a frame payload; the whole payload must be one message.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(msg)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), ProtocolError> {
    if payload.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(payload.len()));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Most bytes read from the peer in one step while a payload arrives. The payload buffer
/// grows only by what actually arrived, so a peer that announces [`MAX_FRAME`] bytes and
/// sends ten costs ten bytes (plus this scratch chunk), not 16 MiB.
pub const READ_CHUNK: usize = 16 << 10;

/// A byte source whose reads can be given a time limit: a socket. Lets [`read_frame_within`]
/// bound the whole frame, not each read (a per-read timeout is re-armed by every byte, so a
/// peer trickling one byte a minute would hold a connection forever).
pub trait TimedRead: Read {
    /// Makes the next reads fail once `limit` passes without data.
    fn set_read_limit(&mut self, limit: Duration) -> io::Result<()>;
}

impl TimedRead for TcpStream {
    fn set_read_limit(&mut self, limit: Duration) -> io::Result<()> {
        // A zero timeout means "none" to the socket: never pass it.
        self.set_read_timeout(Some(limit.max(Duration::from_millis(1))))
    }
}

/// Reads one frame, calling `arm(reader, started)` before each read (`started`: a byte of
/// the frame has arrived). The payload grows as bytes arrive, up to the announced length.
fn read_frame_with<R: Read>(
    r: &mut R,
    mut arm: impl FnMut(&mut R, bool) -> Result<(), ProtocolError>,
) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        arm(r, got > 0)?;
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut payload = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK.min(len)];
    while payload.len() < len {
        let want = (len - payload.len()).min(chunk.len());
        arm(r, true)?;
        match r.read(&mut chunk[..want]) {
            Ok(0) => return Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => payload.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(payload)
}

/// Reads one frame. A connection closed cleanly before the first byte of a frame gives
/// [`ProtocolError::Closed`]; an oversized length gives [`ProtocolError::TooLarge`] without
/// reading the payload. No deadline beyond the reader's own: see [`read_frame_within`].
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, ProtocolError> {
    read_frame_with(r, |_, _| Ok(()))
}

/// Reads one frame from a socket: its first byte must come within `idle`, and the whole
/// frame within `whole` of that first byte, however the peer spaces its bytes; otherwise
/// [`ProtocolError::Deadline`] (the connection is then unusable: part of a frame was read).
pub fn read_frame_within(
    r: &mut impl TimedRead,
    idle: Duration,
    whole: Duration,
) -> Result<Vec<u8>, ProtocolError> {
    let mut deadline: Option<Instant> = None;
    let result = read_frame_with(r, |r, started| {
        let limit = if started {
            let now = Instant::now();
            let end = *deadline.get_or_insert(now + whole);
            let left = end.saturating_duration_since(now);
            if left.is_zero() {
                return Err(ProtocolError::Deadline(whole));
            }
            left
        } else {
            idle
        };
        r.set_read_limit(limit)?;
        Ok(())
    });
    match result {
        // The socket's timeout fired once the frame had begun: that is the deadline.
        Err(ProtocolError::Io(e))
            if deadline.is_some()
                && matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
        {
            Err(ProtocolError::Deadline(whole))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientOp, Op, Request};

    #[test]
    fn request_roundtrip() {
        let req = Request::Client(ClientOp {
            client: 7,
            seq: 3,
            op: Op::Append {
                key: "k".into(),
                value: "v".into(),
            },
        });
        let bytes = encode(&req).unwrap();
        let mut framed = Vec::new();
        write_frame(&mut framed, &bytes).unwrap();
        let payload = read_frame(&mut framed.as_slice()).unwrap();
        assert_eq!(decode::<Request>(&payload).unwrap(), req);
    }

    #[test]
    fn garbage_and_trailing_bytes_do_not_decode() {
        assert!(decode::<Request>(&[0xff, 0xff, 0xff, 0xff, 0x13]).is_err());
        let mut bytes = encode(&Request::GetView).unwrap();
        bytes.push(0);
        assert!(decode::<Request>(&bytes).is_err());
        // A string claiming to be enormous must not allocate it.
        let mut huge = vec![2u8]; // variant Client
        huge.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode::<Request>(&huge).is_err());
    }

    /// Gives `data` then EOF, and records the largest buffer a read was asked to fill.
    struct Recording<'a> {
        data: &'a [u8],
        per_read: usize,
        largest: usize,
    }

    impl Read for Recording<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest = self.largest.max(buf.len());
            let n = buf.len().min(self.per_read);
            self.data.read(&mut buf[..n])
        }
    }

    #[test]
    fn announced_length_is_not_allocated_before_the_bytes_arrive() {
        // A peer announces the largest frame and sends ten bytes: the reader was asked to
        // fill a 16 MiB buffer (allocated before reading) before the fix.
        let mut bytes = (MAX_FRAME as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[7; 10]);
        let mut r = Recording {
            data: &bytes,
            per_read: usize::MAX,
            largest: 0,
        };
        assert!(read_frame(&mut r).is_err());
        assert!(r.largest <= READ_CHUNK, "asked to fill {} bytes", r.largest);
    }

    #[test]
    fn frame_arriving_in_pieces_is_read_whole() {
        let payload: Vec<u8> = (0..3 * READ_CHUNK + 5).map(|i| i as u8).collect();
        let mut framed = Vec::new();
        write_frame(&mut framed, &payload).unwrap();
        let mut r = Recording {
            data: &framed,
            per_read: 3,
            largest: 0,
        };
        assert_eq!(read_frame(&mut r).unwrap(), payload);
    }

    #[test]
    fn trickling_peer_hits_the_frame_deadline() {
        // One byte every 50 ms: a per-read timeout of 300 ms never fires (before the fix the
        // read lasted as long as the peer kept trickling); the whole-frame deadline does.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(&100u32.to_be_bytes());
            for _ in 0..80 {
                if s.write_all(&[1]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (mut s, _) = listener.accept().unwrap();
        let start = Instant::now();
        let r = read_frame_within(&mut s, Duration::from_secs(5), Duration::from_millis(300));
        assert!(matches!(r, Err(ProtocolError::Deadline(_))), "{r:?}");
        // The peer trickles for 4 s; the deadline ends the read long before (with margin
        // for a loaded machine).
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "{:?}",
            start.elapsed()
        );
        drop(s);
        peer.join().unwrap();
    }

    #[test]
    fn oversized_frame_is_refused_before_reading() {
        let framed = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut framed.as_slice()),
            Err(ProtocolError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame(&mut [].as_slice()),
            Err(ProtocolError::Closed)
        ));
    }
}
