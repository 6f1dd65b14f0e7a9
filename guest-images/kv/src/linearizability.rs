//! A linearizability checker for histories of Get/Put/Append on string registers.
//!
//! The history is a list of operations, each with the time it was invoked and the time its
//! answer came back (or none: the client gave up, so the operation may or may not have taken
//! effect). Linearizability is local, so each key is checked on its own. For one key the
//! checker searches, in the style of Wing & Gong with the memoization of Lowe (and Knossos /
//! Porcupine), for a total order of the operations that respects real time (an operation
//! that returned before another was invoked comes first) and the register's sequential
//! semantics (a Get returns the value left by the Puts and Appends before it; a missing key
//! reads as ""). Operations without an answer may be left out.

use std::collections::{BTreeMap, HashSet};

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A read (its result is [`Operation::output`]).
    Get,
    /// A Put of this value.
    Put(String),
    /// An Append of this text.
    Append(String),
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that ran it.
    pub client: u64,
    /// The key it worked on.
    pub key: String,
    /// What it did.
    pub input: Input,
    /// The value a completed Get returned.
    pub output: Option<String>,
    /// Invocation time (any monotonic unit shared by all clients).
    pub call: u64,
    /// Completion time; `None` if the operation never completed.
    pub ret: Option<u64>,
}

/// Errors of the checker.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("history of key {key:?} is not linearizable ({ops} operations)")]
    /// No order of one key's operations fits both real time and the register's semantics.
    NotLinearizable {
        /// The key whose history fails.
        key: String,
        /// How many operations that key's history has.
        ops: usize,
    },
    #[error("history of key {key:?} is too hard to check within the search budget")]
    /// Checking one key's history took more than [`STEP_BUDGET`] search steps.
    Budget {
        /// The key given up on.
        key: String,
    },
    #[error("malformed history: {0}")]
    /// An operation returns before it is invoked, or a completed Get has no output (what
    /// is wrong, with the operation).
    Malformed(String),
}

/// Most search steps for one key before giving up.
pub const STEP_BUDGET: u64 = 20_000_000;

/// Checks a whole history, key by key.
pub fn check(history: &[Operation]) -> Result<(), CheckError> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if let Some(r) = op.ret {
            if r < op.call {
                return Err(CheckError::Malformed(format!(
                    "operation returns before its invocation: {op:?}"
                )));
            }
            if op.input == Input::Get && op.output.is_none() {
                return Err(CheckError::Malformed(format!(
                    "completed Get without output: {op:?}"
                )));
            }
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        check_key(key, &ops)?;
    }
    Ok(())
}

struct Search<'a> {
    ops: &'a [&'a Operation],
    done: Vec<bool>,
    /// Completed operations not yet linearized.
    left: usize,
    seen: HashSet<(Vec<u64>, String)>,
    steps: u64,
}

impl Search<'_> {
    fn key(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.done.len().div_ceil(64)];
        for (i, d) in self.done.iter().enumerate() {
            if *d {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    /// Whether the remaining operations can be linearized from register value `value`.
    fn run(&mut self, value: &str) -> Result<bool, ()> {
        if self.left == 0 {
            return Ok(true);
        }
        self.steps += 1;
        if self.steps > STEP_BUDGET {
            return Err(());
        }
        // An operation can come next only if it was invoked before every pending
        // (not yet linearized) completed operation returned.
        let min_ret = self
            .ops
            .iter()
            .zip(&self.done)
            .filter(|(_, d)| !**d)
            .filter_map(|(o, _)| o.ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if self.done[i] || op.call >= min_ret {
                continue;
            }
            let next = match &op.input {
                Input::Get => {
                    if op.ret.is_some() && op.output.as_deref() != Some(value) {
                        continue;
                    }
                    value.to_string()
                }
                Input::Put(v) => v.clone(),
                Input::Append(v) => format!("{value}{v}"),
            };
            self.done[i] = true;
            if op.ret.is_some() {
                self.left -= 1;
            }
            if self.seen.insert((self.key(), next.clone())) && self.run(&next)? {
                return Ok(true);
            }
            self.done[i] = false;
            if op.ret.is_some() {
                self.left += 1;
            }
        }
        Ok(false)
    }
}

fn check_key(key: &str, ops: &[&Operation]) -> Result<(), CheckError> {
    let mut s = Search {
        ops,
        done: vec![false; ops.len()],
        left: ops.iter().filter(|o| o.ret.is_some()).count(),
        seen: HashSet::new(),
        steps: 0,
    };
    match s.run("") {
        Ok(true) => Ok(()),
        Ok(false) => Err(CheckError::NotLinearizable {
            key: key.to_string(),
            ops: ops.len(),
        }),
        Err(()) => Err(CheckError::Budget {
            key: key.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, input: Input, output: Option<&str>, call: u64, ret: u64) -> Operation {
        Operation {
            client,
            key: "k".into(),
            input,
            output: output.map(String::from),
            call,
            ret: Some(ret),
        }
    }

    fn put(v: &str) -> Input {
        Input::Put(v.into())
    }

    fn app(v: &str) -> Input {
        Input::Append(v.into())
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, Input::Get, Some(""), 0, 1),
            op(1, put("a"), None, 2, 3),
            op(1, app("b"), None, 4, 5),
            op(1, Input::Get, Some("ab"), 6, 7),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn concurrent_history_is_linearizable() {
        // Two appends overlap; reads during the overlap see either order's prefix, and the
        // final read fixes "yx".
        let h = vec![
            op(1, app("x"), None, 0, 10),
            op(2, app("y"), None, 1, 9),
            op(3, Input::Get, Some("y"), 2, 3),
            op(3, Input::Get, Some("yx"), 11, 12),
            op(4, Input::Get, Some("yx"), 5, 20),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn stale_read_is_not_linearizable() {
        // A Put completes, then a Get that starts afterwards returns the old value.
        let h = vec![
            op(1, put("old"), None, 0, 1),
            op(1, put("new"), None, 2, 3),
            op(2, Input::Get, Some("old"), 4, 5),
        ];
        assert!(matches!(check(&h), Err(CheckError::NotLinearizable { .. })));
    }

    #[test]
    fn reads_going_back_in_time_are_not_linearizable() {
        // The overlapping reads may each pick an order, but not contradictory ones.
        let h = vec![
            op(1, app("x"), None, 0, 10),
            op(2, app("y"), None, 0, 10),
            op(3, Input::Get, Some("xy"), 1, 2),
            op(3, Input::Get, Some("y"), 3, 4),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn duplicated_append_is_not_linearizable() {
        let h = vec![
            op(1, app("x"), None, 0, 1),
            op(2, Input::Get, Some("xx"), 2, 3),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn pending_operations_may_or_may_not_take_effect() {
        let mut pending = op(1, app("x"), None, 0, 0);
        pending.ret = None;
        let seen = vec![pending.clone(), op(2, Input::Get, Some("x"), 5, 6)];
        assert_eq!(check(&seen), Ok(()));
        let unseen = vec![pending.clone(), op(2, Input::Get, Some(""), 5, 6)];
        assert_eq!(check(&unseen), Ok(()));
        // But it cannot take effect twice, nor vanish once seen.
        let flicker = vec![
            pending,
            op(2, Input::Get, Some("x"), 5, 6),
            op(2, Input::Get, Some(""), 7, 8),
        ];
        assert!(check(&flicker).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![op(1, put("a"), None, 0, 1)];
        let mut other = op(2, Input::Get, Some(""), 2, 3);
        other.key = "other".into();
        h.push(other);
        assert_eq!(check(&h), Ok(()));
        let mut bad = op(2, Input::Get, Some("a"), 2, 3);
        bad.key = "other".into();
        h.push(bad);
        assert!(matches!(
            check(&h),
            Err(CheckError::NotLinearizable { key, .. }) if key == "other"
        ));
    }

    #[test]
    fn larger_concurrent_history_is_checked_quickly() {
        // 6 clients, 40 appends each in lockstep rounds, with reads of the exact prefix.
        let mut h = Vec::new();
        let mut value = String::new();
        let mut t = 0;
        for round in 0..40 {
            let mut round_vals = Vec::new();
            for c in 0..6u64 {
                let v = format!("{c}.{round};");
                h.push(op(c, app(&v), None, t, t + 10));
                round_vals.push(v);
            }
            for v in round_vals {
                value.push_str(&v);
            }
            h.push(op(9, Input::Get, Some(&value), t + 11, t + 12));
            t += 20;
        }
        assert_eq!(check(&h), Ok(()));
    }
}
