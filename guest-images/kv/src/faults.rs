//! Fault injection: each node (view service, key/value server, client) owns a [`Faults`]
//! handle, applied at its edges by [`crate::net`], so tests can make the network lose
//! exactly what they want:
//! - incoming requests can be dropped before they are handled, or their replies dropped
//!   after they were handled (the connection is closed instead of answered), each with a
//!   given probability from a seeded generator;
//! - a node can be made unreachable (every incoming connection is closed at once);
//! - outgoing calls to chosen addresses can be blocked (they fail at once), which together
//!   with the above partitions a node from the view service, from its peers, or from all.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What happens to one incoming request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Handle it and send the reply.
    Serve,
    /// Close the connection without handling it.
    DropRequest,
    /// Handle it, then close the connection instead of replying.
    DropReply,
}

#[derive(Debug, Default)]
struct FaultConfig {
    drop_requests_permille: u32,
    drop_replies_permille: u32,
    blocked: BTreeSet<String>,
}

/// A node's injected faults. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Faults {
    config: Mutex<FaultConfig>,
    unreachable: AtomicBool,
    rng: AtomicU64,
    dropped_requests: AtomicU64,
    dropped_replies: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::new(0x9e37_79b9_7f4a_7c15)
    }
}

fn permille(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 1000.0).round() as u32
}

impl Faults {
    /// No faults; `seed` drives the random drops.
    pub fn new(seed: u64) -> Faults {
        Faults {
            config: Mutex::new(FaultConfig::default()),
            unreachable: AtomicBool::new(false),
            rng: AtomicU64::new(seed | 1),
            dropped_requests: AtomicU64::new(0),
            dropped_replies: AtomicU64::new(0),
        }
    }

    fn config(&self) -> MutexGuard<'_, FaultConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops each incoming request with probability `p` before handling it.
    pub fn set_drop_requests(&self, p: f64) {
        self.config().drop_requests_permille = permille(p);
    }

    /// Drops the reply of each incoming request with probability `p` after handling it.
    pub fn set_drop_replies(&self, p: f64) {
        self.config().drop_replies_permille = permille(p);
    }

    /// Closes every incoming connection at once (nobody can reach this node).
    pub fn set_unreachable(&self, on: bool) {
        self.unreachable.store(on, Ordering::SeqCst);
    }

    /// Makes outgoing calls to `addr` fail.
    pub fn block(&self, addr: &str) {
        self.config().blocked.insert(addr.to_string());
    }

    /// Lets outgoing calls to `addr` through again.
    pub fn unblock(&self, addr: &str) {
        self.config().blocked.remove(addr);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        *self.config() = FaultConfig::default();
        self.set_unreachable(false);
    }

    /// Whether this node is unreachable ([`Faults::set_unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        self.unreachable.load(Ordering::SeqCst)
    }

    /// Whether outgoing calls to `addr` are blocked.
    pub fn is_blocked(&self, addr: &str) -> bool {
        self.config().blocked.contains(addr)
    }

    fn roll(&self, permille: u32) -> bool {
        if permille == 0 {
            return false;
        }
        // xorshift64*, advanced atomically.
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y >> 12;
            y ^= y << 25;
            y ^= y >> 27;
            match self
                .rng
                .compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let r = y.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
                    return (r % 1000) < permille as u64;
                }
                Err(cur) => x = cur,
            }
        }
    }

    /// How many incoming requests and replies were dropped so far.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_requests.load(Ordering::Relaxed),
            self.dropped_replies.load(Ordering::Relaxed),
        )
    }

    /// Decides the fate of one incoming request.
    pub fn fate(&self) -> Fate {
        let (dreq, drep) = {
            let c = self.config();
            (c.drop_requests_permille, c.drop_replies_permille)
        };
        if self.roll(dreq) {
            self.dropped_requests.fetch_add(1, Ordering::Relaxed);
            Fate::DropRequest
        } else if self.roll(drep) {
            self.dropped_replies.fetch_add(1, Ordering::Relaxed);
            Fate::DropReply
        } else {
            Fate::Serve
        }
    }
}
