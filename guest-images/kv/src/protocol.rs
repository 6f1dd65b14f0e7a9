//! Wire protocol shared by the view service, the key/value servers and the clients.
//!
//! Every message is one *frame*: a 4-byte big-endian payload length followed by the payload,
//! a [`Request`] or [`Response`] encoded with bincode (serde, standard configuration). A
//! frame longer than [`MAX_FRAME`] is refused before its payload is read: the receiver
//! answers [`ErrorCode::TooLarge`] and closes the connection (it cannot find the next frame
//! boundary without reading the oversized payload). A payload that does not decode (garbage
//! bytes, an unknown request variant, trailing bytes) gets [`ErrorCode::BadRequest`] and the
//! connection stays usable, since the framing itself is intact.
//!
//! A connection carries any number of request/response pairs, one at a time.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest frame payload accepted, in bytes. A full state transfer must fit in one frame,
/// which is why the store itself is capped at [`MAX_STORE_BYTES`].
pub const MAX_FRAME: usize = 16 << 20;
/// Largest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, in bytes: both the argument of a Put/Append and a stored value after an
/// Append.
pub const MAX_VALUE: usize = 1 << 20;
/// Largest total size of the keys and values of the store, in bytes.
pub const MAX_STORE_BYTES: usize = 8 << 20;

/// One view: a statement of who is primary and who is backup. Views are numbered from 1;
/// view 0 is "no view yet".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub num: u64,
    pub primary: Option<String>,
    pub backup: Option<String>,
}

impl View {
    pub fn is_primary(&self, server: &str) -> bool {
        self.primary.as_deref() == Some(server)
    }

    pub fn is_backup(&self, server: &str) -> bool {
        self.backup.as_deref() == Some(server)
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "view {} (primary {}, backup {})",
            self.num,
            self.primary.as_deref().unwrap_or("-"),
            self.backup.as_deref().unwrap_or("-")
        )
    }
}

/// The view service's answer to a ping or a view query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewReply {
    pub view: View,
    /// Whether the primary of `view` has acknowledged it.
    pub acked: bool,
}

/// A key/value operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Get { key: String },
    Put { key: String, value: String },
    Append { key: String, value: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Append { key, .. } => key,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// A client's operation with its unique id: `(client, seq)`. A client has at most one
/// operation outstanding and numbers them increasingly, so the servers remember only each
/// client's last write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientOp {
    pub client: u64,
    pub seq: u64,
    pub op: Op,
}

/// The result of an applied operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A Put or Append took effect.
    Done,
    /// The value of a Get ("" for a missing key).
    Value(String),
}

/// A client's last applied write and its result (the at-most-once table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWrite {
    pub seq: u64,
    pub result: OpResult,
}

/// The full state a primary sends to a new backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub data: BTreeMap<String, String>,
    pub last: BTreeMap<u64, LastWrite>,
}

/// What a key/value server says about itself (for tests and humans).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub me: String,
    pub view: View,
    pub view_acked: bool,
    /// The view in which this server's store is valid, if any.
    pub state_view: Option<u64>,
    pub backup_synced: bool,
    pub keys: u64,
}

/// Every request of the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Server -> view service: "I am alive and have completed view `viewnum`" (0: I restarted).
    Ping { server: String, viewnum: u64 },
    /// Anyone -> view service: what is the current view?
    GetView,
    /// Client -> primary.
    Client(ClientOp),
    /// Primary -> backup: apply (or, for a Get, confirm) this operation in view `view`.
    /// `msg_seq` orders the primary's messages within a view.
    Forward {
        view: u64,
        from: String,
        msg_seq: u64,
        op: ClientOp,
    },
    /// Primary -> backup: replace your whole state by this snapshot (view `view`).
    Transfer {
        view: u64,
        from: String,
        msg_seq: u64,
        snapshot: Snapshot,
    },
    /// Anyone -> key/value server: describe yourself.
    Status,
}

/// Every response of the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    View(ViewReply),
    /// A write took effect, or a forward/transfer was accepted.
    Ok,
    Value(String),
    Status(ServerStatus),
    Err {
        code: ErrorCode,
        detail: String,
    },
}

impl Response {
    pub fn err(code: ErrorCode, detail: impl Into<String>) -> Response {
        Response::Err {
            code,
            detail: detail.into(),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// This server is not the primary (as far as it knows): ask the view service again.
    WrongServer,
    /// This server is the primary but cannot serve right now (backup unreachable or not yet
    /// in sync, view not yet acknowledged): try again.
    Retry,
    /// A backup refused a forwarded operation or a state transfer.
    Rejected,
    /// The request could not be decoded, or this service does not handle it.
    BadRequest,
    /// A frame, key or value is larger than allowed, or the store is full.
    TooLarge,
}

/// Errors of the framing and encoding layer.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("i/o error")]
    Io(#[from] io::Error),
    #[error("cannot decode message: {0}")]
    Decode(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
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

/// Reads one frame. A connection closed cleanly before the first byte of a frame gives
/// [`ProtocolError::Closed`]; an oversized length gives [`ProtocolError::TooLarge`] without
/// reading the payload.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
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
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// Checks the sizes of a client operation's key and value.
pub fn check_op_size(op: &Op) -> Result<(), String> {
    if op.key().len() > MAX_KEY {
        return Err(format!(
            "key of {} bytes exceeds the maximum of {MAX_KEY}",
            op.key().len()
        ));
    }
    if let Op::Put { value, .. } | Op::Append { value, .. } = op {
        if value.len() > MAX_VALUE {
            return Err(format!(
                "value of {} bytes exceeds the maximum of {MAX_VALUE}",
                value.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
