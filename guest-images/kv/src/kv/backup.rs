//! The backup side of [`KvCore`]: which forwards and state transfers it accepts.
//!
//! # What is and is not authenticated
//!
//! As in the lecture, the network inside the guest is trusted: there are no keys and no
//! signatures, and a message's `from` is a claim. A server learns the view only from the
//! view service's replies to its own pings (the service's address is configuration), never
//! from a peer. A backup accepts a Forward or Transfer only when all of these hold:
//! - the message's view number is the backup's current view (a server in an older or newer
//!   view, e.g. a stale primary, is refused; a newer number makes the backup ping at once);
//! - the backup is the backup of that view, and the claimed `from` is its primary;
//! - the message's sequence number is plausible ([`MAX_MSG_SEQ`]) and in order: a transfer
//!   newer than anything accepted in this view, a forward directly after the last one;
//! - when the connection's source address is known, it is the one the first accepted
//!   transfer of this view came from (see below);
//! - a forwarded operation or a transferred snapshot obeys the store's limits
//!   ([`crate::store`]).
//!
//! Anything refused leaves the state untouched (store, sequence number, pinned address), so
//! a confused or stale server cannot corrupt it, and the real primary simply resyncs.
//!
//! What is *not* authenticated: a peer that knows the current view can forge a message in
//! the primary's name. The source address cannot prove the name: names are advertised
//! addresses (`--advertise`), and behind user-mode networking or NAT a connection's source
//! is a gateway, not the primary's address. So the backup only *pins* the source address
//! of the first transfer it accepts in a view (a forward needs such a transfer first): later
//! messages of that view from another address are refused, which stops a second server
//! wrongly advertising the same name (or a forger that comes after the primary) from
//! interleaving its operations, and costs nothing where all peers share one address.

use std::net::IpAddr;

use super::KvCore;
use crate::protocol::{ClientOp, ErrorCode, Request, Response, Snapshot};
use crate::store::Store;

/// Largest message sequence number accepted. A primary numbers its messages from 1, one by
/// one: at a million a second it would need 146,000 years to get here, so a larger number
/// is corrupt or forged. Refusing it also means the backup's next expected number
/// (`last + 1`) can never overflow.
pub const MAX_MSG_SEQ: u64 = 1 << 62;

impl KvCore {
    /// The next sequence number for a message to the backup, or `None` once the primary has
    /// used them all (it then serves nothing more, rather than wrap around).
    pub(super) fn take_msg_seq(&mut self) -> Option<u64> {
        let seq = self.next_msg_seq;
        if seq > MAX_MSG_SEQ {
            return None;
        }
        self.next_msg_seq = seq.checked_add(1)?;
        Some(seq)
    }

    fn check_from_primary(
        &mut self,
        view: u64,
        from: &str,
        msg_seq: u64,
        peer: Option<IpAddr>,
    ) -> Result<(), Response> {
        if view > self.view.num {
            self.wants_ping = true;
        }
        let refuse = |why: String| Err(Response::err(ErrorCode::Rejected, why));
        if view != self.view.num {
            return refuse(format!(
                "{} is in view {}, not {view}",
                self.me, self.view.num
            ));
        }
        if !self.is_backup() {
            return refuse(format!("{} is not the backup of {}", self.me, self.view));
        }
        if !self.view.is_primary(from) {
            return refuse(format!("{from} is not the primary of {}", self.view));
        }
        if msg_seq == 0 || msg_seq > MAX_MSG_SEQ {
            return refuse(format!("implausible message number {msg_seq}"));
        }
        if let (Some(peer), Some(pinned)) = (peer, self.primary_peer) {
            if peer != pinned {
                return refuse(format!(
                    "message in {from}'s name from {peer}, but its transfer came from {pinned}"
                ));
            }
        }
        Ok(())
    }

    /// Backup side: a forwarded operation.
    pub fn on_forward(
        &mut self,
        view: u64,
        from: &str,
        msg_seq: u64,
        op: &ClientOp,
        peer: Option<IpAddr>,
    ) -> Response {
        if let Err(r) = self.check_from_primary(view, from, msg_seq, peer) {
            return r;
        }
        if self.state_view != Some(view) {
            return Response::err(ErrorCode::Rejected, "backup has no state yet");
        }
        if self.last_msg_seq.checked_add(1) != Some(msg_seq) {
            return Response::err(
                ErrorCode::Rejected,
                format!(
                    "out of order: message {msg_seq} after {}",
                    self.last_msg_seq
                ),
            );
        }
        if let Err(e) = self.store.check(op) {
            // The primary checked it against the same state: we differ, or it is not a
            // primary of ours. Refuse without a change; the primary resyncs.
            return Response::err(ErrorCode::Rejected, format!("forwarded operation: {e}"));
        }
        self.last_msg_seq = msg_seq;
        self.store.apply(op);
        Response::Ok
    }

    /// Backup side: a state transfer.
    pub fn on_transfer(
        &mut self,
        view: u64,
        from: &str,
        msg_seq: u64,
        snapshot: Snapshot,
        peer: Option<IpAddr>,
    ) -> Response {
        if let Err(r) = self.check_from_primary(view, from, msg_seq, peer) {
            return r;
        }
        if msg_seq <= self.last_msg_seq {
            return Response::err(
                ErrorCode::Rejected,
                format!("stale transfer {msg_seq} after {}", self.last_msg_seq),
            );
        }
        let store = match Store::from_snapshot(snapshot) {
            Ok(store) => store,
            Err(e) => return Response::err(ErrorCode::Rejected, format!("transferred state: {e}")),
        };
        self.last_msg_seq = msg_seq;
        self.store = store;
        self.state_view = Some(view);
        if self.primary_peer.is_none() {
            self.primary_peer = peer;
        }
        Response::Ok
    }

    /// Dispatches a server-to-server or status request (client requests go through
    /// [`KvCore::begin_client`]), its source address unknown.
    pub fn handle_peer(&mut self, request: Request) -> Response {
        self.handle_peer_from(request, None)
    }

    /// Dispatches a server-to-server or status request that came from `peer` (the
    /// connection's source address, when known).
    pub fn handle_peer_from(&mut self, request: Request, peer: Option<IpAddr>) -> Response {
        match request {
            Request::Forward {
                view,
                from,
                msg_seq,
                op,
            } => self.on_forward(view, &from, msg_seq, &op, peer),
            Request::Transfer {
                view,
                from,
                msg_seq,
                snapshot,
            } => self.on_transfer(view, &from, msg_seq, snapshot, peer),
            Request::Status => Response::Status(self.status()),
            Request::Ping { .. } | Request::GetView => Response::err(
                ErrorCode::BadRequest,
                "this is a key/value server, not the view service",
            ),
            Request::Client(_) => Response::err(ErrorCode::BadRequest, "use begin_client"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Op, View, ViewReply, MAX_VALUE};

    /// B, backup of view 2 = (A, B), synced by A's transfer (message 1) from `a_ip`.
    fn synced_backup(a_ip: Option<IpAddr>) -> KvCore {
        let mut b = KvCore::new("B");
        b.on_view(ViewReply {
            view: View {
                num: 2,
                primary: Some("A".into()),
                backup: Some("B".into()),
            },
            acked: false,
        });
        assert_eq!(
            b.on_transfer(2, "A", 1, Snapshot::default(), a_ip),
            Response::Ok
        );
        b
    }

    fn forward(msg_seq: u64, op: Op) -> Request {
        Request::Forward {
            view: 2,
            from: "A".into(),
            msg_seq,
            op: ClientOp {
                client: 1,
                seq: msg_seq,
                op,
            },
        }
    }

    fn put(k: &str, v: String) -> Op {
        Op::Put {
            key: k.into(),
            value: v,
        }
    }

    fn rejected(r: &Response) -> bool {
        matches!(
            r,
            Response::Err {
                code: ErrorCode::Rejected,
                ..
            }
        )
    }

    #[test]
    fn only_the_current_views_primary_is_obeyed() {
        let mut b = synced_backup(None);
        let before = b.store().clone();
        let transfer = |view, from: &str| Request::Transfer {
            view,
            from: from.into(),
            msg_seq: 5,
            snapshot: Snapshot::default(),
        };
        // A name that is not the primary, the primary's name in an older or newer view.
        for (view, from) in [(2, "C"), (2, "B"), (1, "A"), (3, "A")] {
            assert!(
                rejected(&b.handle_peer(transfer(view, from))),
                "{view} {from}"
            );
            let mut f = forward(2, put("k", "x".into()));
            if let Request::Forward {
                view: v, from: f2, ..
            } = &mut f
            {
                *v = view;
                *f2 = from.into();
            }
            assert!(rejected(&b.handle_peer(f)), "{view} {from}");
        }
        assert_eq!(b.store(), &before);
        assert!(
            b.take_wants_ping(),
            "a newer view number makes the backup ask"
        );
    }

    #[test]
    fn messages_from_another_address_than_the_transfer_are_refused() {
        // Fails before the fix: the claimed name was all that was checked.
        let a: IpAddr = [10, 0, 2, 15].into();
        let other: IpAddr = [10, 0, 2, 99].into();
        let mut b = synced_backup(Some(a));
        let r = b.handle_peer_from(forward(2, put("k", "forged".into())), Some(other));
        assert!(rejected(&r), "{r:?}");
        let t = Request::Transfer {
            view: 2,
            from: "A".into(),
            msg_seq: 9,
            snapshot: Snapshot::default(),
        };
        assert!(rejected(&b.handle_peer_from(t, Some(other))));
        assert_eq!(b.store().get("k"), None);
        // The real primary goes on where it was.
        let r = b.handle_peer_from(forward(2, put("k", "real".into())), Some(a));
        assert_eq!(r, Response::Ok);
        assert_eq!(b.store().get("k"), Some("real"));
    }

    #[test]
    fn forwarded_operations_obey_the_client_limits() {
        // Fails before the fix: the backup applied whatever it was forwarded.
        let mut b = synced_backup(None);
        let big = forward(2, put("k", "v".repeat(MAX_VALUE + 1)));
        assert!(rejected(&b.handle_peer(big)));
        let long_key = forward(2, put(&"k".repeat(2000), String::new()));
        assert!(rejected(&b.handle_peer(long_key)));
        // Nine 1 MiB values do not fit in the 8 MiB store.
        for i in 0..8 {
            let op = put(&format!("k{i}"), "v".repeat(MAX_VALUE - 3));
            assert_eq!(b.handle_peer(forward(2 + i, op)), Response::Ok);
        }
        let over = forward(10, put("k8", "v".repeat(MAX_VALUE)));
        assert!(rejected(&b.handle_peer(over)));
        assert_eq!(b.store().get("k8"), None);
        assert_eq!(b.last_msg_seq, 9, "a refused message is not counted");
        // A transfer over the limits is refused whole.
        let mut snap = Snapshot::default();
        snap.data.insert("k".into(), "v".repeat(MAX_VALUE + 1));
        assert!(rejected(&b.on_transfer(2, "A", 11, snap, None)));
        assert_eq!(b.store().len(), 8);
    }

    #[test]
    fn absurd_sequence_numbers_are_refused_without_panic() {
        // Fails before the fix: the transfer was accepted, and the next forward computed
        // u64::MAX + 1 (a panic in debug builds, a wrap to 0 in release).
        let mut b = synced_backup(None);
        let t = Request::Transfer {
            view: 2,
            from: "A".into(),
            msg_seq: u64::MAX,
            snapshot: Snapshot::default(),
        };
        assert!(rejected(&b.handle_peer(t)));
        for seq in [0, u64::MAX, MAX_MSG_SEQ + 1] {
            assert!(rejected(&b.handle_peer(forward(seq, put("k", "x".into())))));
        }
        assert_eq!(
            b.handle_peer(forward(2, put("k", "x".into()))),
            Response::Ok
        );
        // A primary out of numbers stops, it does not wrap.
        let mut a = KvCore::new("A");
        a.next_msg_seq = u64::MAX;
        assert_eq!(a.take_msg_seq(), None);
        a.next_msg_seq = MAX_MSG_SEQ;
        assert_eq!(a.take_msg_seq(), Some(MAX_MSG_SEQ));
        assert_eq!(a.take_msg_seq(), None);
    }
}
