//! The key/value server's logic: pure and deterministic, no I/O. The TCP layer
//! ([`crate::server`]) drives it: it feeds view service replies in, carries the messages it
//! asks for to the backup, and hands the answers back, holding one lock around each whole
//! step so that operations are applied one at a time.
//!
//! # Roles
//!
//! A server learns the current view from its pings. As *primary* it serves Get, Put and
//! Append; as *backup* it accepts operations forwarded by the primary and state transfers;
//! otherwise it is *idle* and refuses everything.
//!
//! A server's store is valid in one view at most (`state_view`). It becomes valid:
//! - for the primary of view 1 that has not yet acknowledged it: the empty store (nothing
//!   can have been written before view 1);
//! - for the backup of view v: when the primary of view v transfers its whole state;
//! - for the primary of view v: when its store was valid in view v-1 (it was the primary or
//!   the synced backup there). By the view service's rules the primary of v was the primary
//!   or backup of v-1, and the service left v-1 only after its primary acknowledged it,
//!   which the primary does only once its backup holds the full state.
//!
//! A restarted server has no valid store and never serves as primary with it: it pings with
//! 0, and the view service treats it as failed.
//!
//! # Serving (primary of view v)
//!
//! The primary serves only when its store is valid in v, its backup (if any) holds its state,
//! and the view service has recorded its acknowledgement of v. Each operation, Gets
//! included, is forwarded to the backup as `Forward { view: v, .. }` and applied (or, for a
//! Get, read) only after the backup accepted it; the client gets its answer after that. A
//! failed or unanswered forward is *uncertain* (the backup may have applied it): the
//! primary does not apply it, replies an error (the client retries with the same id), and
//! resends its whole state before the next operation, so primary and backup never diverge.
//! Messages to the backup carry a per-primary sequence number: the backup accepts a forward
//! only directly after the previous accepted message, and a transfer only if newer, so a
//! delayed message can never be applied out of order.
//!
//! # Why a stale primary cannot serve
//!
//! Suppose A is primary of view v and the view service has moved to view v+1 without A
//! knowing (A cannot reach it).
//! - If v has a backup B: the service left v only after A acknowledged v, i.e. after B
//!   received A's state. A forwards each operation to B tagged with view v. B accepts it
//!   only while B itself believes the current view is v and that A is its primary (rule 3):
//!   then nobody has served in v+1 yet (the new primary is B, or A itself, and B serves only
//!   after learning v+1, which would make it reject A). So A's reply reflects every
//!   completed write, and its Get reads a value that is current at the moment B confirmed
//!   it. Once B knows v+1 it rejects A, and A answers the client with an error. Reads are
//!   forwarded too, precisely so that a stale primary cannot return stale values.
//! - If v has no backup: a new primary must have been primary or backup in v (rule 1), so
//!   the only candidate is A itself. The service may move to v+1 = (A, C), but it cannot
//!   move past v+1 until A acknowledges v+1, which A does only after transferring its state
//!   to C. Until then C is a backup without state that refuses clients, and A is the only
//!   server serving: no split brain.
//!
//! # Every operation is before or after a state transfer
//!
//! The transfer is built and sent under the same lock as client operations, and operations
//! forwarded afterwards carry higher sequence numbers; the snapshot includes the at-most-once
//! table (each client's last write and its result) so duplicates are still filtered after a
//! failover.
//!
//! # What a backup accepts, and limits
//!
//! The backup's checks (view number, its primary's name, sequence numbers, the source
//! address of the view's transfer) and what they do and do not authenticate are in
//! the private `backup` module. Each check only *narrows* what the backup accepts, so the argument above
//! holds unchanged: anything refused leaves the backup's state as it was, and the primary
//! treats a refusal like a lost answer (no reply to the client, resync before the next
//! operation). Forwarded operations and transferred snapshots obey the same limits as
//! clients' operations ([`crate::store`]); since the primary checks each operation against
//! the same state before forwarding it, an honest primary's forward is never refused for
//! that. The at-most-once table is bounded by refusing new writers once full, never by
//! forgetting a client, so duplicates are still filtered. Sequence numbers stop at
//! [`MAX_MSG_SEQ`] instead of wrapping: a wrapped number could make an old message look
//! next in order.

use crate::protocol::{
    ClientOp, ErrorCode, OpResult, Request, Response, ServerStatus, View, ViewReply,
};
pub use crate::store::Store;

mod backup;
pub use backup::MAX_MSG_SEQ;

fn reply_of(result: OpResult) -> Response {
    match result {
        OpResult::Done => Response::Ok,
        OpResult::Value(v) => Response::Value(v),
    }
}

/// What the driver must do next for a client request.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Answer the client with this.
    Reply(Response),
    /// Send this state transfer to the backup, report the answer with
    /// [`KvCore::transfer_done`], then start the request again.
    Transfer {
        /// The backup's name (address).
        to: String,
        /// The `Request::Transfer` to send it.
        request: Request,
    },
    /// Send this forward to the backup and report the answer with [`KvCore::finish_client`].
    Forward {
        /// The backup's name (address).
        to: String,
        /// The `Request::Forward` to send it.
        request: Request,
    },
}

/// One key/value server's state.
#[derive(Clone, Debug)]
pub struct KvCore {
    me: String,
    view: View,
    view_acked: bool,
    /// The view in which `store` is valid.
    state_view: Option<u64>,
    store: Store,
    /// As primary: the backup of the current view holds our state.
    backup_synced: bool,
    /// As primary: the sequence number of the next message to the backup.
    next_msg_seq: u64,
    /// As backup: the sequence number of the last accepted message in the current view.
    last_msg_seq: u64,
    /// As backup: the source address of the first transfer accepted in the current view,
    /// when known; later messages of the view must come from it (see [`backup`]).
    primary_peer: Option<std::net::IpAddr>,
    /// Something suggested that our view is out of date: ping the view service now.
    wants_ping: bool,
}

impl KvCore {
    /// A server named `me` (its address in views), knowing no view and holding no state.
    pub fn new(me: impl Into<String>) -> KvCore {
        KvCore {
            me: me.into(),
            view: View::default(),
            view_acked: false,
            state_view: None,
            store: Store::default(),
            backup_synced: false,
            next_msg_seq: 1,
            last_msg_seq: 0,
            primary_peer: None,
            wants_ping: false,
        }
    }

    /// This server's name in views.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The latest view learned from the view service.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The store; valid only in the view that [`ServerStatus::state_view`] names.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What this server says about itself, the answer to `Request::Status`.
    pub fn status(&self) -> ServerStatus {
        ServerStatus {
            me: self.me.clone(),
            view: self.view.clone(),
            view_acked: self.view_acked,
            state_view: self.state_view,
            backup_synced: self.backup_synced,
            keys: self.store.len() as u64,
        }
    }

    /// Returns and clears the "ping the view service now" hint.
    pub fn take_wants_ping(&mut self) -> bool {
        std::mem::take(&mut self.wants_ping)
    }

    fn is_primary(&self) -> bool {
        self.view.is_primary(&self.me)
    }

    fn is_backup(&self) -> bool {
        self.view.is_backup(&self.me)
    }

    /// Whether this primary has done what acknowledging its view promises: its store is
    /// valid in the view and its backup, if any, holds it.
    fn ready(&self) -> bool {
        self.is_primary()
            && self.state_view == Some(self.view.num)
            && (self.view.backup.is_none() || self.backup_synced)
    }

    /// The view number to ping with: 0 before the first reply (a restart), the current view
    /// once the primary is ready to acknowledge it, the previous one until then. Non-primaries
    /// ping with the current view (the view service only reads 0 from them).
    pub fn ping_viewnum(&self) -> u64 {
        if self.view.num == 0 {
            0
        } else if self.is_primary() && !self.ready() {
            self.view.num - 1
        } else {
            self.view.num
        }
    }

    /// Takes in the view service's reply to a ping.
    pub fn on_view(&mut self, reply: ViewReply) {
        if reply.view.num < self.view.num {
            // The view service never goes back (it keeps no state across restarts, which
            // are not supported); ignore.
            return;
        }
        let changed = reply.view.num != self.view.num;
        let prev = self.view.num;
        self.view = reply.view;
        self.view_acked = reply.acked;
        if !changed {
            if self.view.num == 1
                && self.is_primary()
                && !self.view_acked
                && self.state_view.is_none()
            {
                // Our first ping's reply was lost and this is a repeat of it.
                self.state_view = Some(1);
                self.store = Store::default();
            }
            return;
        }
        self.backup_synced = false;
        self.last_msg_seq = 0;
        self.primary_peer = None;
        let v = self.view.num;
        if self.is_primary() {
            if v == 1 && !self.view_acked && self.state_view.is_none() {
                // Fresh primary of the first view: the empty store is the state.
                self.state_view = Some(1);
                self.store = Store::default();
            } else if self.state_view == Some(prev) && prev.checked_add(1) == Some(v) {
                // We held the state in the previous view (as its primary or synced backup).
                self.state_view = Some(v);
            } else {
                // Named primary without the state (restarted): never serve it.
                self.state_view = None;
                self.store = Store::default();
            }
        } else {
            // A backup waits for the new primary's transfer; an idle server has no state.
            self.state_view = None;
            self.store = Store::default();
        }
    }

    /// The state transfer the primary must send before anything else, if any.
    pub fn pending_transfer(&mut self) -> Option<(String, Request)> {
        if !self.is_primary() || self.state_view != Some(self.view.num) || self.backup_synced {
            return None;
        }
        let to = self.view.backup.clone()?;
        // Out of sequence numbers: no transfer, so no service (see `begin_client`).
        let msg_seq = self.take_msg_seq()?;
        Some((
            to,
            Request::Transfer {
                view: self.view.num,
                from: self.me.clone(),
                msg_seq,
                snapshot: self.store.snapshot(),
            },
        ))
    }

    /// Reports the backup's answer to a transfer (`None`: no answer).
    pub fn transfer_done(&mut self, request: &Request, answer: Option<&Response>) -> bool {
        let Request::Transfer { view, .. } = request else {
            return false;
        };
        let ok = matches!(answer, Some(Response::Ok)) && *view == self.view.num;
        if ok {
            self.backup_synced = true;
        } else {
            self.wants_ping = true;
        }
        ok
    }

    /// Starts a client request.
    pub fn begin_client(&mut self, op: &ClientOp) -> Step {
        if !self.is_primary() {
            return Step::Reply(Response::err(
                ErrorCode::WrongServer,
                format!("{} is not the primary of {}", self.me, self.view),
            ));
        }
        if self.state_view != Some(self.view.num) {
            return Step::Reply(Response::err(
                ErrorCode::Retry,
                "primary has no state for this view (it restarted)",
            ));
        }
        if let Some((to, request)) = self.pending_transfer() {
            return Step::Transfer { to, request };
        }
        if !self.view_acked {
            self.wants_ping = true;
            return Step::Reply(Response::err(
                ErrorCode::Retry,
                "the view service has not yet recorded the primary's acknowledgement",
            ));
        }
        if let Err(e) = self.store.check(op) {
            return Step::Reply(Response::err(e.code(), e.to_string()));
        }
        match self.view.backup.clone() {
            Some(to) => {
                // Also reached when a resync found no number left: the backup is not in
                // sync then, so nothing may be forwarded.
                let Some(msg_seq) = self.take_msg_seq().filter(|_| self.backup_synced) else {
                    return Step::Reply(Response::err(
                        ErrorCode::Retry,
                        "primary has used all its message numbers",
                    ));
                };
                Step::Forward {
                    to,
                    request: Request::Forward {
                        view: self.view.num,
                        from: self.me.clone(),
                        msg_seq,
                        op: op.clone(),
                    },
                }
            }
            None => Step::Reply(reply_of(self.store.apply(op))),
        }
    }

    /// Finishes a client request after its forward: `answer` is the backup's response
    /// (`None`: no answer).
    pub fn finish_client(&mut self, op: &ClientOp, answer: Option<&Response>) -> Response {
        match answer {
            Some(Response::Ok) => reply_of(self.store.apply(op)),
            Some(Response::Err { detail, .. }) => {
                // The backup is in another view (or out of sync): resync, and maybe we are
                // no longer primary.
                self.backup_synced = false;
                self.wants_ping = true;
                Response::err(
                    ErrorCode::WrongServer,
                    format!("backup refused the operation: {detail}"),
                )
            }
            _ => {
                self.backup_synced = false;
                self.wants_ping = true;
                Response::err(ErrorCode::Retry, "backup did not answer")
            }
        }
    }
}

#[cfg(test)]
mod tests;
