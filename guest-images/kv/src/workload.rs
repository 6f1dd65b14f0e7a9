//! A mixed workload for tests and `kvclient mixed`: concurrent clients doing Get, Put and
//! Append on a few shared keys, each operation recorded with its invocation and completion
//! time on one clock, so the history can go to the [`crate::linearizability`] checker.
//!
//! Every value a client writes is unique (`p<client>.<op>` for a Put, `a<client>.<op>;` for
//! an Append), so a lost, duplicated or reordered effect shows in what a Get returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::client::{Clerk, ClerkConfig, ClientError};
use crate::linearizability::{Input, Operation};

/// A tiny deterministic random generator: which key and which operation.
#[derive(Clone, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// A number in `0..n` (`n` > 0).
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Mixed {
    /// Number of concurrent clients, one thread and one clerk each.
    pub clients: u64,
    /// Operations each client runs (fewer if stopped or after an error).
    pub ops_per_client: u64,
    /// The keys are `k0` .. `k<keys-1>`.
    pub keys: u64,
    /// Seed of the clients' choices of key and operation.
    pub seed: u64,
}

/// What happened: every operation with its times, and how many of each kind.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The completed operations with their times, for [`crate::linearizability::check`].
    pub ops: Vec<Operation>,
}

impl History {
    /// Counts of (gets, puts, appends).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for op in &self.ops {
            match op.input {
                Input::Get => c.0 += 1,
                Input::Put(_) => c.1 += 1,
                Input::Append(_) => c.2 += 1,
            }
        }
        c
    }
}

/// The key a step of the workload works on.
pub fn key_name(i: u64) -> String {
    format!("k{i}")
}

/// Runs `spec` against the service `config` names, one thread and one clerk per client.
/// `progress(client, op)` is called after each completed operation; once `stop()` says so,
/// the clients start no more operations. The first error of any client ends the run with
/// that error (the others finish their current operation).
pub fn run_mixed(
    config: &ClerkConfig,
    spec: &Mixed,
    progress: &(dyn Fn(u64, u64) + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<History, ClientError> {
    let start = Instant::now();
    // Times start at 2: 0 to 1 is when the values read before the run were there.
    let now = move || u64::try_from(start.elapsed().as_nanos()).map_or(u64::MAX, |t| t + 2);
    // Scoped threads borrow these; `failed` spares the others a lock per operation.
    let history = Mutex::new(Vec::new());
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for client in 0..spec.clients {
            let (history, failed, first_error) = (&history, &failed, &first_error);
            let config = config.clone();
            s.spawn(move || {
                let mut clerk = Clerk::new(config);
                let mut rng = Lcg(spec.seed.wrapping_add(client).wrapping_mul(31) + 17);
                for i in 0..spec.ops_per_client {
                    if failed.load(Ordering::SeqCst) || stop() {
                        return;
                    }
                    let key = key_name(rng.next(spec.keys));
                    let call = now();
                    let done = match rng.next(3) {
                        0 => clerk.get(&key).map(|v| (Input::Get, Some(v))),
                        1 => {
                            let v = format!("p{client}.{i}");
                            clerk.put(&key, &v).map(|()| (Input::Put(v), None))
                        }
                        _ => {
                            let v = format!("a{client}.{i};");
                            clerk.append(&key, &v).map(|()| (Input::Append(v), None))
                        }
                    };
                    match done {
                        Ok((input, output)) => {
                            let ret = now();
                            if let Ok(mut h) = history.lock() {
                                h.push(Operation {
                                    client,
                                    key,
                                    input,
                                    output,
                                    call,
                                    ret: Some(ret),
                                });
                            }
                            progress(client, i);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            if let Ok(mut first) = first_error.lock() {
                                first.get_or_insert(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let ops = history.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(History { ops })
}

/// What the keys hold before the run (a service that served other clients before), as
/// Puts done from time 0 to 1, so the checker starts from those values.
pub fn read_initial(config: &ClerkConfig, spec: &Mixed) -> Result<History, ClientError> {
    let mut clerk = Clerk::new(config.clone());
    let mut ops = Vec::new();
    for k in 0..spec.keys {
        let key = key_name(k);
        let value = clerk.get(&key)?;
        if !value.is_empty() {
            ops.push(Operation {
                client: spec.clients + 1,
                key,
                input: Input::Put(value),
                output: None,
                call: 0,
                ret: Some(1),
            });
        }
    }
    Ok(History { ops })
}

/// Reads every key once more after the run, as one more client, so the final state is
/// part of the checked history.
pub fn read_back(
    config: &ClerkConfig,
    spec: &Mixed,
    history: &mut History,
) -> Result<(), ClientError> {
    let start_after = history.ops.iter().filter_map(|o| o.ret).max().unwrap_or(0);
    let mut clerk = Clerk::new(config.clone());
    for k in 0..spec.keys {
        let key = key_name(k);
        let value = clerk.get(&key)?;
        // After every operation of the run: times past its last completion.
        let call = start_after.saturating_add(1 + 2 * k);
        history.ops.push(Operation {
            client: spec.clients,
            key,
            input: Input::Get,
            output: Some(value),
            call,
            ret: Some(call + 1),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcg_stays_in_range_and_repeats_from_its_seed() {
        let mut a = Lcg(5);
        let mut b = Lcg(5);
        for n in 1..50 {
            let x = a.next(n);
            assert!(x < n);
            assert_eq!(x, b.next(n));
        }
        assert_eq!(Lcg(1).next(0), 0);
    }

    #[test]
    fn counts_each_kind() {
        let op = |input| Operation {
            client: 0,
            key: "k0".into(),
            input,
            output: None,
            call: 0,
            ret: Some(1),
        };
        let h = History {
            ops: vec![
                op(Input::Put("p".into())),
                op(Input::Append("a".into())),
                op(Input::Append("b".into())),
            ],
        };
        assert_eq!(h.counts(), (0, 1, 2));
    }
}
