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
//! A connection carries any number of request/response pairs, one at a time. Framing, its
//! limits and deadlines are in [`crate::frame`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::frame::{
    decode, encode, read_frame, read_frame_within, write_frame, ProtocolError, TimedRead,
    MAX_FRAME, READ_CHUNK,
};

/// Largest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, in bytes: both the argument of a Put/Append and a stored value after an
/// Append.
pub const MAX_VALUE: usize = 1 << 20;
/// Largest total size of the keys and values of the store, in bytes.
pub const MAX_STORE_BYTES: usize = 8 << 20;
/// Most clients the at-most-once table remembers; a write from a new client is refused with
/// [`ErrorCode::TooManyClients`] once it is full (see [`crate::store`] for why none is
/// forgotten).
pub const MAX_CLIENTS: usize = 10_000;

/// One view: a statement of who is primary and who is backup. Views are numbered from 1;
/// view 0 is "no view yet".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// View number, counting from 1; 0 means no view yet.
    pub num: u64,
    /// The primary's name (its `IP:PORT` address), if any.
    pub primary: Option<String>,
    /// The backup's name (its `IP:PORT` address), if any.
    pub backup: Option<String>,
}

impl View {
    /// Whether `server` is this view's primary.
    pub fn is_primary(&self, server: &str) -> bool {
        self.primary.as_deref() == Some(server)
    }

    /// Whether `server` is this view's backup.
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
    /// The view service's current view.
    pub view: View,
    /// Whether the primary of `view` has acknowledged it.
    pub acked: bool,
}

/// A key/value operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Read a key's value ("" for a missing key).
    Get {
        /// The key to read.
        key: String,
    },
    /// Set a key's value.
    Put {
        /// The key to set.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Add to the end of a key's value (a missing key counts as "").
    Append {
        /// The key whose value grows.
        key: String,
        /// The text added at its end.
        value: String,
    },
}

impl Op {
    /// The key the operation works on.
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Append { key, .. } => key,
        }
    }

    /// Whether it changes the store (a Put or an Append).
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// A client's operation with its unique id: `(client, seq)`. A client has at most one
/// operation outstanding and numbers them increasingly, so the servers remember only each
/// client's last write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientOp {
    /// The client's id (random, one per clerk).
    pub client: u64,
    /// The client's number for this operation, counting from 1.
    pub seq: u64,
    /// The operation itself.
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
    /// The client's number for that write ([`ClientOp::seq`]).
    pub seq: u64,
    /// What it returned, answered again to a retry.
    pub result: OpResult,
}

/// The full state a primary sends to a new backup. On the wire both tables are lists of
/// pairs; a key that appears twice is refused when decoding (a map would silently keep the
/// last one, so a corrupt or forged transfer could differ from the primary's store yet be
/// accepted - see [`unique_keys`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every key with its value.
    #[serde(deserialize_with = "unique_keys::deserialize")]
    pub data: BTreeMap<String, String>,
    /// The at-most-once table: each client id's last applied write.
    #[serde(deserialize_with = "unique_keys::deserialize")]
    pub last: BTreeMap<u64, LastWrite>,
}

/// Decoding a map whose keys must all differ.
pub mod unique_keys {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, Visitor};
    use std::collections::BTreeMap;
    use std::fmt;
    use std::marker::PhantomData;

    struct UniqueKeys<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for UniqueKeys<K, V>
    where
        K: Deserialize<'de> + Ord + fmt::Debug,
        V: Deserialize<'de>,
    {
        type Value = BTreeMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map without duplicate keys")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((k, v)) = access.next_entry::<K, V>()? {
                if map.contains_key(&k) {
                    // Keys are bounded by the frame size; show at most the start of one.
                    let shown: String = format!("{k:?}").chars().take(64).collect();
                    return Err(A::Error::custom(format!("duplicate key {shown}")));
                }
                map.insert(k, v);
            }
            Ok(map)
        }
    }

    /// Deserializes a map, failing if a key appears twice (for `#[serde(deserialize_with)]`).
    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + fmt::Debug,
        V: Deserialize<'de>,
    {
        d.deserialize_map(UniqueKeys(PhantomData))
    }
}

/// What a key/value server says about itself (for tests and humans).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's name in views (its advertised address).
    pub me: String,
    /// The latest view the server has learned from the view service.
    pub view: View,
    /// Whether the view service reported that view acknowledged by its primary.
    pub view_acked: bool,
    /// The view in which this server's store is valid, if any.
    pub state_view: Option<u64>,
    /// As primary: whether the backup of the view holds this server's state.
    pub backup_synced: bool,
    /// Number of keys in the server's store.
    pub keys: u64,
}

/// Every request of the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Server -> view service: "I am alive and have completed view `viewnum`" (0: I restarted).
    Ping {
        /// The pinging server's name (its `IP:PORT` address).
        server: String,
        /// The view it has completed (0: it restarted).
        viewnum: u64,
    },
    /// Anyone -> view service: what is the current view?
    GetView,
    /// Client -> primary.
    Client(ClientOp),
    /// Primary -> backup: apply (or, for a Get, confirm) this operation in view `view`.
    /// `msg_seq` orders the primary's messages within a view.
    Forward {
        /// The view the primary is serving in.
        view: u64,
        /// The primary's name.
        from: String,
        /// The primary's number for this message; it numbers its messages one by one.
        msg_seq: u64,
        /// The client's operation.
        op: ClientOp,
    },
    /// Primary -> backup: replace your whole state by this snapshot (view `view`).
    Transfer {
        /// The view the primary is serving in.
        view: u64,
        /// The primary's name.
        from: String,
        /// The primary's number for this message to its backup (see `Forward`).
        msg_seq: u64,
        /// The primary's whole state.
        snapshot: Snapshot,
    },
    /// Anyone -> key/value server: describe yourself.
    Status,
}

/// Every response of the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The view service's answer to `Ping` or `GetView`.
    View(ViewReply),
    /// A write took effect, or a forward/transfer was accepted.
    Ok,
    /// The value a Get read ("" for a missing key).
    Value(String),
    /// A key/value server's answer to `Status`.
    Status(ServerStatus),
    /// The request was refused.
    Err {
        /// Why, for the caller to act on.
        code: ErrorCode,
        /// The explanation, for humans.
        detail: String,
    },
}

impl Response {
    /// A refusal with `code` and a human-readable `detail`.
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
    /// The request could not be decoded, this service does not handle it, or it is invalid
    /// (e.g. a ping from a name that is not a server address, or claiming a future view).
    BadRequest,
    /// A frame, key or value is larger than allowed, or the store is full.
    TooLarge,
    /// A write from a client the at-most-once table has no room for (it never forgets a
    /// client, so that a retry is never applied twice): this client cannot write.
    TooManyClients,
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

    /// A snapshot as it travels: bincode writes a map exactly as a list of pairs.
    #[derive(Serialize)]
    struct WireSnapshot {
        data: Vec<(String, String)>,
        last: Vec<(u64, LastWrite)>,
    }

    fn last(seq: u64) -> LastWrite {
        LastWrite {
            seq,
            result: OpResult::Done,
        }
    }

    #[test]
    fn a_snapshot_with_a_key_twice_is_refused() {
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let good = WireSnapshot {
            data: vec![kv("a", "1"), kv("b", "2")],
            last: vec![(1, last(5)), (2, last(6))],
        };
        let s: Snapshot = decode(&encode(&good).unwrap()).unwrap();
        assert_eq!(s.data.len(), 2);
        assert_eq!(s.last.len(), 2);
        // A key twice: a plain map would keep "evil" and report one key.
        let dup = WireSnapshot {
            data: vec![kv("a", "1"), kv("a", "evil")],
            last: vec![],
        };
        let e = decode::<Snapshot>(&encode(&dup).unwrap()).unwrap_err();
        assert!(e.to_string().contains("duplicate key"), "{e}");
        let dup_client = WireSnapshot {
            data: vec![],
            last: vec![(7, last(1)), (7, last(2))],
        };
        assert!(decode::<Snapshot>(&encode(&dup_client).unwrap()).is_err());
        // Inside a whole Transfer request too (what a backup's server decodes).
        // Request's variants up to Transfer, so that Transfer gets the same index.
        #[allow(dead_code)]
        #[derive(Serialize)]
        enum WireRequest {
            Ping,
            GetView,
            Client,
            Forward,
            Transfer {
                view: u64,
                from: String,
                msg_seq: u64,
                snapshot: WireSnapshot,
            },
        }
        let forged = WireRequest::Transfer {
            view: 2,
            from: "A".into(),
            msg_seq: 1,
            snapshot: dup,
        };
        let e = decode::<Request>(&encode(&forged).unwrap()).unwrap_err();
        assert!(e.to_string().contains("duplicate key"), "{e}");
        // The same request without the duplicate decodes: the mirror is faithful.
        let fine = WireRequest::Transfer {
            view: 2,
            from: "A".into(),
            msg_seq: 1,
            snapshot: good,
        };
        assert!(matches!(
            decode::<Request>(&encode(&fine).unwrap()).unwrap(),
            Request::Transfer { .. }
        ));
    }
}
