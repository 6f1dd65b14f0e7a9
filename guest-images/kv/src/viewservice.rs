//! The view service's state machine: pure and deterministic, time passed in as ticks.
//!
//! Servers ping the view service every ping interval with the number of the view they have
//! completed; the service calls [`ViewCore::tick`] once per interval. The rules, from the
//! primary/backup lecture:
//!
//! - A server is *dead* once `dead_pings` ticks have passed without a ping from it, and
//!   *live* again after a single ping.
//! - The first server to ping becomes the primary of view 1 (without backup).
//! - When the primary dies, the backup becomes primary and a live idle server (if any)
//!   becomes the new backup. When there is no live backup the service is stuck: the primary
//!   of view i+1 must have been the primary or the backup of view i (rule 1), so an idle
//!   server, which has no state, is never made primary.
//! - When the backup dies, or the slot is empty, a live idle server becomes backup.
//! - The service never moves to a new view until the primary of the current view has
//!   acknowledged it (pinged with its number), even if that primary seems dead: the
//!   primary acknowledges a view only after its backup has the full state, so this is how
//!   the service knows the backup can take over.
//! - A server that pings with view number 0 has restarted and lost its state: if it is in
//!   the current view it is treated as failed (as if dead, even though it pings), and its
//!   acknowledgements are ignored until the view changes. The one exception is the primary
//!   of view 1 before it has acknowledged: it cannot have served anything yet (a primary
//!   serves only after its acknowledgement is recorded), so a repeated first ping (its
//!   reply was lost) is not a failure.
//!
//! What a ping may not do (an invalid ping is refused with a [`PingError`] and has no
//! effect at all: no liveness, no acknowledgement, no view change):
//! - claim a view number above the current view: no server can have completed a view that
//!   does not exist yet, so the ping is forged, corrupt, or from before a restart of the
//!   service (not supported); taking it as a sign of life could make its sender backup;
//! - make the table of pingers grow without bound: at most [`MAX_SERVERS`] servers are
//!   tracked. A server that is neither primary nor backup and has been dead for
//!   `dead_pings` more ticks is forgotten (it cannot be picked while dead anyway, and one
//!   ping makes it live and tracked again); when the table is still full, a ping from a new
//!   server is refused. Members of the current view are never forgotten.
//!
//! What a ping can still do, by the lecture's rules, is all the view service can know:
//! names are claims (the wire layer, [`crate::vs_server`], accepts only names that are
//! numeric server addresses), so a ping with view 0 in the primary's name ends its role as
//! a restart would, and a ping with the current number in its name acknowledges the view.
//! The network is trusted, as in the lecture.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::{View, ViewReply};

/// Most servers whose pings are tracked at once (the view has two; the rest are spares).
pub const MAX_SERVERS: usize = 64;

/// Why a ping was refused (it had no effect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// The ping claims a view above the current one, which no server can have completed.
    #[error("ping claims view {claimed}, but the current view is {current}")]
    FutureView {
        /// The view number the ping carried.
        claimed: u64,
        /// The service's current view number.
        current: u64,
    },
    /// A server not yet tracked pinged while [`MAX_SERVERS`] are, after forgetting the
    /// long-dead ones.
    #[error("already tracking {MAX_SERVERS} live servers")]
    TooManyServers,
}

/// The view service's state.
#[derive(Clone, Debug)]
pub struct ViewCore {
    dead_pings: u64,
    now: u64,
    view: View,
    acked: bool,
    /// Tick of each server's last ping.
    last_ping: BTreeMap<String, u64>,
    /// Members of the current view that restarted since it began.
    failed: BTreeSet<String>,
}

impl ViewCore {
    /// A view service that declares a server dead after `dead_pings` ticks without a ping
    /// (at least 1).
    pub fn new(dead_pings: u64) -> ViewCore {
        ViewCore {
            dead_pings: dead_pings.max(1),
            now: 0,
            view: View::default(),
            acked: false,
            last_ping: BTreeMap::new(),
            failed: BTreeSet::new(),
        }
    }

    /// The current view and whether its primary acknowledged it.
    pub fn reply(&self) -> ViewReply {
        ViewReply {
            view: self.view.clone(),
            acked: self.acked,
        }
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether the current view's primary has acknowledged it.
    pub fn acked(&self) -> bool {
        self.acked
    }

    /// Handles a ping from `server`, which has completed view `viewnum` (0: it restarted);
    /// a refused ping is answered with the current view and has no effect.
    pub fn ping(&mut self, server: &str, viewnum: u64) -> ViewReply {
        self.try_ping(server, viewnum)
            .unwrap_or_else(|_| self.reply())
    }

    /// Handles a ping, or refuses it without any effect (see the module comment).
    pub fn try_ping(&mut self, server: &str, viewnum: u64) -> Result<ViewReply, PingError> {
        if viewnum > self.view.num {
            return Err(PingError::FutureView {
                claimed: viewnum,
                current: self.view.num,
            });
        }
        if !self.last_ping.contains_key(server) {
            self.forget_dead();
            if self.last_ping.len() >= MAX_SERVERS {
                return Err(PingError::TooManyServers);
            }
        }
        Ok(self.accept_ping(server, viewnum))
    }

    /// Forgets the servers outside the view that have been dead for `dead_pings` more ticks.
    fn forget_dead(&mut self) {
        let (now, forget_after) = (self.now, self.dead_pings.saturating_mul(2));
        let view = &self.view;
        self.last_ping.retain(|s, &mut t| {
            view.is_primary(s) || view.is_backup(s) || now.saturating_sub(t) < forget_after
        });
    }

    fn accept_ping(&mut self, server: &str, viewnum: u64) -> ViewReply {
        self.last_ping.insert(server.to_string(), self.now);
        if self.view.num == 0 {
            // The first server to ping becomes primary of view 1.
            self.new_view(Some(server.to_string()), None);
            return self.reply();
        }
        let member = self.view.is_primary(server) || self.view.is_backup(server);
        if viewnum == 0 && member {
            let fresh_first_primary =
                self.view.num == 1 && self.view.is_primary(server) && !self.acked;
            if !fresh_first_primary {
                self.failed.insert(server.to_string());
            }
        }
        if self.view.is_primary(server) && viewnum == self.view.num && !self.failed.contains(server)
        {
            self.acked = true;
        }
        self.advance();
        self.reply()
    }

    /// One ping interval has passed.
    pub fn tick(&mut self) {
        self.now = self.now.saturating_add(1);
        self.forget_dead();
        self.advance();
    }

    /// Whether `server` pinged within the last `dead_pings` ticks.
    fn pinged_recently(&self, server: &str) -> bool {
        self.last_ping
            .get(server)
            .is_some_and(|&t| self.now.saturating_sub(t) < self.dead_pings)
    }

    /// Whether `server`, a member of the current view, is alive for the view's purposes.
    fn member_ok(&self, server: &str) -> bool {
        self.pinged_recently(server) && !self.failed.contains(server)
    }

    /// A live server to be the backup under `primary`: preferably one outside the current
    /// view, otherwise a restarted member (it has no state, but it will get a transfer).
    fn pick_backup(&self, primary: &str) -> Option<String> {
        let live = self
            .last_ping
            .keys()
            .filter(|s| s.as_str() != primary && self.pinged_recently(s));
        let mut fallback = None;
        for s in live {
            let member = self.view.is_primary(s) || self.view.is_backup(s);
            if !member {
                return Some(s.clone());
            }
            if self.failed.contains(s) && fallback.is_none() {
                fallback = Some(s.clone());
            }
        }
        fallback
    }

    fn advance(&mut self) {
        if self.view.num == 0 || !self.acked {
            // No view yet, or the primary has not acknowledged the current one: stay.
            return;
        }
        let Some(primary) = self.view.primary.clone() else {
            return;
        };
        let backup = self.view.backup.clone();
        if !self.member_ok(&primary) {
            // Promote the backup if it is alive; otherwise nobody with the state is left.
            if let Some(b) = backup.filter(|b| self.member_ok(b)) {
                let next = self.pick_backup(&b);
                self.new_view(Some(b), next);
            }
            return;
        }
        match backup {
            Some(b) if !self.member_ok(&b) => {
                let next = self.pick_backup(&primary);
                self.new_view(Some(primary), next);
            }
            None => {
                if let Some(next) = self.pick_backup(&primary) {
                    self.new_view(Some(primary), Some(next));
                }
            }
            Some(_) => {}
        }
    }

    fn new_view(&mut self, primary: Option<String>, backup: Option<String>) {
        // 2^64 views cannot happen; if they did, staying is safe (no new view), wrapping not.
        let Some(num) = self.view.num.checked_add(1) else {
            return;
        };
        self.view = View {
            num,
            primary,
            backup,
        };
        self.acked = false;
        self.failed.clear();
    }
}

#[cfg(test)]
mod tests;
