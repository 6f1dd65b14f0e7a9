//! The replicated state of a key/value server: the map and the at-most-once table, with the
//! limits every change must obey wherever it comes from (a client, a forward from the
//! primary, a state transfer).
//!
//! # Limits
//!
//! Keys are at most [`MAX_KEY`] bytes, values [`MAX_VALUE`] (also after an Append), the keys
//! and values together [`MAX_STORE_BYTES`], and the at-most-once table holds at most
//! [`MAX_CLIENTS`] clients. A forwarded operation or a transferred snapshot is checked
//! against the same limits as a client's operation and refused whole, without any change,
//! when it breaks one: a backup must not hold a state its primary could never have built,
//! and a state transfer must always fit in a frame (the map is at most 8 MiB of keys and
//! values, at most 5/3 of that once encoded since a key needs at least 3 bytes beyond the
//! ~1,900 shorter ones; the table ~20 bytes a client: well under the 16 MiB of a frame).
//!
//! # The at-most-once table is never trimmed
//!
//! The table remembers each client's last write and its result, so that a retried write is
//! answered without being applied again. Forgetting a client's entry would let its retry of
//! a write that already took effect apply a second time, so entries are never evicted.
//! Instead, once [`MAX_CLIENTS`] clients are recorded, a write from a client not yet in the
//! table is refused with [`ErrorCode::TooManyClients`] (nothing applied); clients already
//! recorded and reads from anyone are served as before. Safety is kept; the price is that
//! the service accepts no new writers once full (clients are long-lived here: one id per
//! process).

use std::collections::BTreeMap;

use crate::protocol::{
    check_op_size, ClientOp, ErrorCode, LastWrite, Op, OpResult, Snapshot, MAX_KEY, MAX_VALUE,
};
pub use crate::protocol::{MAX_CLIENTS, MAX_STORE_BYTES};

/// Why an operation or a snapshot does not fit the store's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// An operation's key or value is over its maximum size (the explanation).
    #[error("{0}")]
    OpTooLarge(String),
    /// An Append would make a value longer than [`MAX_VALUE`].
    #[error("value of key {key:?} would grow to {len} bytes, over the maximum of {MAX_VALUE}")]
    ValueTooLarge {
        /// The key appended to.
        key: String,
        /// The value's length after the Append, in bytes.
        len: usize,
    },
    /// The keys and values would total more than [`MAX_STORE_BYTES`].
    #[error("store full (maximum {MAX_STORE_BYTES} bytes)")]
    Full,
    /// A write from a new client while the at-most-once table holds [`MAX_CLIENTS`], or a
    /// snapshot with more.
    #[error("at-most-once table full ({MAX_CLIENTS} clients): no new writers accepted")]
    TooManyClients,
    /// A snapshot holds a key over [`MAX_KEY`] (its length in bytes).
    #[error("snapshot key of {0} bytes exceeds the maximum of {MAX_KEY}")]
    SnapshotKey(usize),
    /// A snapshot holds a value over [`MAX_VALUE`] (its length in bytes).
    #[error("snapshot value of {0} bytes exceeds the maximum of {MAX_VALUE}")]
    SnapshotValue(usize),
}

impl StoreError {
    /// The error code a client (or the primary) is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::TooManyClients => ErrorCode::TooManyClients,
            _ => ErrorCode::TooLarge,
        }
    }
}

/// The replicated state: the map and the at-most-once table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Store {
    data: BTreeMap<String, String>,
    last: BTreeMap<u64, LastWrite>,
    bytes: usize,
}

impl Store {
    /// The store a snapshot describes, if it obeys every limit.
    pub fn from_snapshot(snapshot: Snapshot) -> Result<Store, StoreError> {
        if snapshot.last.len() > MAX_CLIENTS {
            return Err(StoreError::TooManyClients);
        }
        let mut bytes = 0usize;
        for (k, v) in &snapshot.data {
            if k.len() > MAX_KEY {
                return Err(StoreError::SnapshotKey(k.len()));
            }
            if v.len() > MAX_VALUE {
                return Err(StoreError::SnapshotValue(v.len()));
            }
            // Both are bounded above, so this cannot overflow; checked anyway for the reader.
            bytes = bytes.saturating_add(k.len() + v.len());
            if bytes > MAX_STORE_BYTES {
                return Err(StoreError::Full);
            }
        }
        Ok(Store {
            data: snapshot.data,
            last: snapshot.last,
            bytes,
        })
    }

    /// The whole state, as a primary sends it to a new backup.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            data: self.data.clone(),
            last: self.last.clone(),
        }
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The result already recorded for a duplicate write, if `op` is one.
    pub fn duplicate(&self, op: &ClientOp) -> Option<OpResult> {
        if !op.op.is_write() {
            return None;
        }
        match self.last.get(&op.client) {
            Some(last) if op.seq == last.seq => Some(last.result.clone()),
            // An older request of a client that has moved on: never applied again.
            Some(last) if op.seq < last.seq => Some(OpResult::Done),
            _ => None,
        }
    }

    /// Checks that applying `op` keeps the store within its limits. A duplicate is always
    /// fine: it changes nothing.
    pub fn check(&self, op: &ClientOp) -> Result<(), StoreError> {
        if self.duplicate(op).is_some() {
            return Ok(());
        }
        check_op_size(&op.op).map_err(StoreError::OpTooLarge)?;
        let (key, new_len, old_len) = match &op.op {
            Op::Get { .. } => return Ok(()),
            Op::Put { key, value } => (key, value.len(), self.get(key).map_or(0, str::len)),
            Op::Append { key, value } => {
                let old = self.get(key).map_or(0, str::len);
                (key, old.saturating_add(value.len()), old)
            }
        };
        if new_len > MAX_VALUE {
            return Err(StoreError::ValueTooLarge {
                key: key.clone(),
                len: new_len,
            });
        }
        let key_bytes = if self.data.contains_key(key) {
            0
        } else {
            key.len()
        };
        let after = self.bytes.saturating_sub(old_len) + new_len + key_bytes;
        if after > MAX_STORE_BYTES {
            return Err(StoreError::Full);
        }
        if !self.last.contains_key(&op.client) && self.last.len() >= MAX_CLIENTS {
            return Err(StoreError::TooManyClients);
        }
        Ok(())
    }

    /// Applies `op` once: a duplicate write returns its recorded result. The caller has
    /// checked it with [`Store::check`].
    pub fn apply(&mut self, op: &ClientOp) -> OpResult {
        if let Some(result) = self.duplicate(op) {
            return result;
        }
        let result = match &op.op {
            Op::Get { key } => return OpResult::Value(self.get(key).unwrap_or("").to_string()),
            Op::Put { key, value } => {
                let old = self.data.insert(key.clone(), value.clone());
                self.bytes += value.len();
                match old {
                    Some(old) => self.bytes = self.bytes.saturating_sub(old.len()),
                    None => self.bytes += key.len(),
                }
                OpResult::Done
            }
            Op::Append { key, value } => {
                let entry = self.data.entry(key.clone()).or_insert_with(|| {
                    self.bytes += key.len();
                    String::new()
                });
                entry.push_str(value);
                self.bytes += value.len();
                OpResult::Done
            }
        };
        self.last.insert(
            op.client,
            LastWrite {
                seq: op.seq,
                result: result.clone(),
            },
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(k: &str, v: &str) -> Op {
        Op::Append {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn store_applies_duplicates_once() {
        let mut st = Store::default();
        let op = |seq, v: &str| ClientOp {
            client: 1,
            seq,
            op: append("k", v),
        };
        st.apply(&op(1, "a"));
        st.apply(&op(1, "a"));
        st.apply(&op(2, "b"));
        st.apply(&op(1, "a"));
        assert_eq!(st.get("k"), Some("ab"));
        let snap = st.snapshot();
        let mut st2 = Store::from_snapshot(snap).unwrap();
        st2.apply(&op(2, "b"));
        assert_eq!(st2, st);
    }

    #[test]
    fn snapshot_breaking_a_limit_is_refused() {
        let mut snap = Snapshot::default();
        snap.data.insert("k".repeat(MAX_KEY + 1), String::new());
        assert_eq!(
            Store::from_snapshot(snap),
            Err(StoreError::SnapshotKey(MAX_KEY + 1))
        );
        let mut snap = Snapshot::default();
        snap.data.insert("k".into(), "v".repeat(MAX_VALUE + 1));
        assert!(Store::from_snapshot(snap).is_err());
        // Nine keys of 1 MiB values: each fits, the whole does not.
        let mut snap = Snapshot::default();
        for i in 0..9 {
            snap.data.insert(format!("k{i}"), "v".repeat(MAX_VALUE));
        }
        assert_eq!(Store::from_snapshot(snap), Err(StoreError::Full));
        let mut snap = Snapshot::default();
        for c in 0..=MAX_CLIENTS as u64 {
            let w = LastWrite {
                seq: 1,
                result: OpResult::Done,
            };
            snap.last.insert(c, w);
        }
        assert_eq!(Store::from_snapshot(snap), Err(StoreError::TooManyClients));
    }

    #[test]
    fn full_client_table_refuses_new_writers_only() {
        let mut st = Store::default();
        for c in 0..MAX_CLIENTS as u64 {
            let op = ClientOp {
                client: c,
                seq: 1,
                op: append("k", ""),
            };
            assert_eq!(st.check(&op), Ok(()));
            st.apply(&op);
        }
        let new_writer = ClientOp {
            client: u64::MAX,
            seq: 1,
            op: append("k", "x"),
        };
        assert_eq!(st.check(&new_writer), Err(StoreError::TooManyClients));
        assert_eq!(StoreError::TooManyClients.code(), ErrorCode::TooManyClients);
        // A recorded client still writes (its entry is replaced, not added), its retry is
        // still filtered, and anyone still reads.
        let known = ClientOp {
            client: 7,
            seq: 2,
            op: append("k", "y"),
        };
        assert_eq!(st.check(&known), Ok(()));
        st.apply(&known);
        assert_eq!(st.check(&known), Ok(()));
        assert_eq!(st.apply(&known), OpResult::Done);
        assert_eq!(st.get("k"), Some("y"));
        let read = ClientOp {
            client: u64::MAX,
            seq: 1,
            op: Op::Get { key: "k".into() },
        };
        assert_eq!(st.check(&read), Ok(()));
    }
}
