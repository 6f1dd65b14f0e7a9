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

use std::collections::BTreeMap;

use crate::protocol::{
    check_op_size, ClientOp, ErrorCode, LastWrite, Op, OpResult, Request, Response, ServerStatus,
    Snapshot, View, ViewReply, MAX_STORE_BYTES, MAX_VALUE,
};

/// The replicated state: the map and the at-most-once table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Store {
    data: BTreeMap<String, String>,
    last: BTreeMap<u64, LastWrite>,
    bytes: usize,
}

impl Store {
    pub fn from_snapshot(snapshot: Snapshot) -> Store {
        let bytes = snapshot.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        Store {
            data: snapshot.data,
            last: snapshot.last,
            bytes,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            data: self.data.clone(),
            last: self.last.clone(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The result already recorded for a duplicate write, if `op` is one.
    fn duplicate(&self, op: &ClientOp) -> Option<OpResult> {
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

    /// Checks that applying `op` keeps the store within its limits.
    fn check_limits(&self, op: &ClientOp) -> Result<(), String> {
        check_op_size(&op.op)?;
        let (key, new_len, old_len) = match &op.op {
            Op::Get { .. } => return Ok(()),
            Op::Put { key, value } => (key, value.len(), self.get(key).map_or(0, str::len)),
            Op::Append { key, value } => {
                let old = self.get(key).map_or(0, str::len);
                (key, old + value.len(), old)
            }
        };
        if new_len > MAX_VALUE {
            return Err(format!(
                "value of key {key:?} would grow to {new_len} bytes, over the maximum of {MAX_VALUE}"
            ));
        }
        let key_bytes = if self.data.contains_key(key) {
            0
        } else {
            key.len()
        };
        if self.bytes.saturating_sub(old_len) + new_len + key_bytes > MAX_STORE_BYTES {
            return Err(format!("store full (maximum {MAX_STORE_BYTES} bytes)"));
        }
        Ok(())
    }

    /// Applies `op` once: a duplicate write returns its recorded result.
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
    Transfer { to: String, request: Request },
    /// Send this forward to the backup and report the answer with [`KvCore::finish_client`].
    Forward { to: String, request: Request },
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
    /// Something suggested that our view is out of date: ping the view service now.
    wants_ping: bool,
}

impl KvCore {
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
            wants_ping: false,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

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
        let msg_seq = self.next_msg_seq;
        self.next_msg_seq += 1;
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
        if self.store.duplicate(op).is_none() {
            if let Err(why) = self.store.check_limits(op) {
                return Step::Reply(Response::err(ErrorCode::TooLarge, why));
            }
        }
        match self.view.backup.clone() {
            Some(to) => {
                let msg_seq = self.next_msg_seq;
                self.next_msg_seq += 1;
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

    fn check_from_primary(&mut self, view: u64, from: &str) -> Result<(), Response> {
        if view > self.view.num {
            self.wants_ping = true;
        }
        if view != self.view.num {
            return Err(Response::err(
                ErrorCode::Rejected,
                format!("{} is in view {}, not {view}", self.me, self.view.num),
            ));
        }
        if !self.is_backup() {
            return Err(Response::err(
                ErrorCode::Rejected,
                format!("{} is not the backup of {}", self.me, self.view),
            ));
        }
        if !self.view.is_primary(from) {
            return Err(Response::err(
                ErrorCode::Rejected,
                format!("{from} is not the primary of {}", self.view),
            ));
        }
        Ok(())
    }

    /// Backup side: a forwarded operation.
    pub fn on_forward(&mut self, view: u64, from: &str, msg_seq: u64, op: &ClientOp) -> Response {
        if let Err(r) = self.check_from_primary(view, from) {
            return r;
        }
        if self.state_view != Some(view) {
            return Response::err(ErrorCode::Rejected, "backup has no state yet");
        }
        if msg_seq != self.last_msg_seq + 1 {
            return Response::err(
                ErrorCode::Rejected,
                format!(
                    "out of order: message {msg_seq} after {}",
                    self.last_msg_seq
                ),
            );
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
    ) -> Response {
        if let Err(r) = self.check_from_primary(view, from) {
            return r;
        }
        if msg_seq <= self.last_msg_seq {
            return Response::err(
                ErrorCode::Rejected,
                format!("stale transfer {msg_seq} after {}", self.last_msg_seq),
            );
        }
        self.last_msg_seq = msg_seq;
        self.store = Store::from_snapshot(snapshot);
        self.state_view = Some(view);
        Response::Ok
    }

    /// Dispatches a server-to-server or status request (client requests go through
    /// [`KvCore::begin_client`]).
    pub fn handle_peer(&mut self, request: Request) -> Response {
        match request {
            Request::Forward {
                view,
                from,
                msg_seq,
                op,
            } => self.on_forward(view, &from, msg_seq, &op),
            Request::Transfer {
                view,
                from,
                msg_seq,
                snapshot,
            } => self.on_transfer(view, &from, msg_seq, snapshot),
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
    use std::collections::BTreeSet;

    /// A deterministic little world of cores. Messages between servers are delivered by
    /// direct calls; `down` servers and `cut` links drop them.
    struct Sim {
        nodes: BTreeMap<String, KvCore>,
        down: BTreeSet<String>,
        /// Forwards to these servers are applied but their answer is lost.
        lose_answers_from: BTreeSet<String>,
        next_seq: u64,
    }

    impl Sim {
        fn new(names: &[&str]) -> Sim {
            Sim {
                nodes: names
                    .iter()
                    .map(|n| (n.to_string(), KvCore::new(*n)))
                    .collect(),
                down: BTreeSet::new(),
                lose_answers_from: BTreeSet::new(),
                next_seq: 0,
            }
        }

        fn node(&mut self, n: &str) -> &mut KvCore {
            self.nodes.get_mut(n).unwrap()
        }

        fn store(&self, n: &str) -> &Store {
            self.nodes[n].store()
        }

        fn deliver(&mut self, to: &str, req: Request) -> Option<Response> {
            if self.down.contains(to) {
                return None;
            }
            let r = self.node(to).handle_peer(req);
            if self.lose_answers_from.contains(to) {
                None
            } else {
                Some(r)
            }
        }

        /// A node learns view `v` from the view service (with `acked`), and, like the driver,
        /// transfers its state to the backup if it must.
        fn learn(&mut self, n: &str, v: &View, acked: bool) {
            self.node(n).on_view(ViewReply {
                view: v.clone(),
                acked,
            });
            if let Some((to, req)) = self.node(n).pending_transfer() {
                let ans = self.deliver(&to, req.clone());
                self.node(n).transfer_done(&req, ans.as_ref());
            }
        }

        /// The current view, learnt by the given nodes (its backup first, as it must be in
        /// the view to accept the transfer), acknowledged.
        fn install(&mut self, v: &View, nodes: &[&str]) {
            if let Some(b) = v.backup.as_deref().filter(|b| nodes.contains(b)) {
                self.learn(b, v, false);
            }
            for n in nodes {
                self.learn(n, v, true);
            }
        }

        fn op(&mut self, client: u64, op: Op) -> ClientOp {
            self.next_seq += 1;
            ClientOp {
                client,
                seq: self.next_seq,
                op,
            }
        }

        /// Runs a client request at `at` as the driver would.
        fn request(&mut self, at: &str, op: &ClientOp) -> Response {
            for _ in 0..3 {
                match self.node(at).begin_client(op) {
                    Step::Reply(r) => return r,
                    Step::Transfer { to, request } => {
                        let ans = self.deliver(&to, request.clone());
                        if !self.node(at).transfer_done(&request, ans.as_ref()) {
                            return Response::err(ErrorCode::Retry, "transfer failed");
                        }
                    }
                    Step::Forward { to, request } => {
                        let ans = self.deliver(&to, request);
                        return self.node(at).finish_client(op, ans.as_ref());
                    }
                }
            }
            panic!("no progress");
        }
    }

    fn view(num: u64, p: &str, b: Option<&str>) -> View {
        View {
            num,
            primary: Some(p.to_string()),
            backup: b.map(String::from),
        }
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn append(k: &str, v: &str) -> Op {
        Op::Append {
            key: k.into(),
            value: v.into(),
        }
    }

    fn get(k: &str) -> Op {
        Op::Get { key: k.into() }
    }

    fn is_err(r: &Response) -> bool {
        matches!(r, Response::Err { .. })
    }

    /// A world with view 1 = (A, -) then view 2 = (A, B), both installed.
    fn ab() -> Sim {
        let mut s = Sim::new(&["A", "B", "C", "D"]);
        s.learn("A", &view(1, "A", None), false);
        s.install(&view(1, "A", None), &["A"]);
        s.install(&view(2, "A", Some("B")), &["A", "B"]);
        s
    }

    #[test]
    fn fresh_primary_of_view_one_serves_after_ack() {
        let mut s = Sim::new(&["A"]);
        assert_eq!(s.node("A").ping_viewnum(), 0);
        s.learn("A", &view(1, "A", None), false);
        assert_eq!(s.node("A").ping_viewnum(), 1, "ready to acknowledge");
        let op = s.op(1, put("k", "v"));
        assert!(
            is_err(&s.request("A", &op)),
            "no service before the ack is recorded"
        );
        s.install(&view(1, "A", None), &["A"]);
        assert_eq!(s.request("A", &op), Response::Ok);
        let op = s.op(1, get("k"));
        assert_eq!(s.request("A", &op), Response::Value("v".into()));
    }

    #[test]
    fn non_primary_rejects_client_requests() {
        let mut s = ab();
        for n in ["B", "C"] {
            let op = s.op(1, put("k", "v"));
            match s.request(n, &op) {
                Response::Err { code, .. } => assert_eq!(code, ErrorCode::WrongServer),
                r => panic!("{n} served a client: {r:?}"),
            }
        }
    }

    #[test]
    fn primary_acks_only_after_transfer() {
        let mut s = Sim::new(&["A", "B"]);
        s.learn("A", &view(1, "A", None), false);
        s.install(&view(1, "A", None), &["A"]);
        let op = s.op(1, put("k", "v"));
        assert_eq!(s.request("A", &op), Response::Ok);
        // B is down when A learns view 2: A must not acknowledge it.
        s.down.insert("B".into());
        let v2 = view(2, "A", Some("B"));
        s.learn("A", &v2, false);
        assert_eq!(s.node("A").ping_viewnum(), 1);
        s.down.clear();
        s.learn("B", &v2, false);
        s.learn("A", &v2, false);
        assert_eq!(s.node("A").ping_viewnum(), 2);
        assert_eq!(s.node("B").store().get("k"), Some("v"));
    }

    #[test]
    fn primary_replies_only_after_backup_accepts() {
        // Lecture: "missing writes": the client must not get a reply for a write the backup
        // does not have.
        let mut s = ab();
        s.down.insert("B".into());
        let op = s.op(1, put("k", "v"));
        assert!(is_err(&s.request("A", &op)));
        assert_eq!(
            s.node("A").store().get("k"),
            None,
            "not applied at the primary"
        );
        s.down.clear();
        assert_eq!(s.request("A", &op), Response::Ok, "the retry succeeds");
        assert_eq!(s.node("B").store().get("k"), Some("v"));
    }

    #[test]
    fn lost_forward_answer_causes_resync_not_divergence() {
        let mut s = ab();
        // The backup applies append "x" but its answer is lost.
        s.lose_answers_from.insert("B".into());
        let x = s.op(1, append("k", "x"));
        assert!(is_err(&s.request("A", &x)));
        s.lose_answers_from.clear();
        // Another client's append goes through; then the first client retries.
        let y = s.op(2, append("k", "y"));
        assert_eq!(s.request("A", &y), Response::Ok);
        assert_eq!(s.request("A", &x), Response::Ok);
        assert_eq!(s.node("A").store().get("k"), Some("yx"));
        assert_eq!(s.store("A"), s.store("B"), "primary and backup agree");
    }

    #[test]
    fn backup_rejects_forwards_from_old_views() {
        // Lecture: "old messages": 1:A,B 2:B,C 3:C,A 4:A,B; a forward A sent in view 1 arrives
        // at B in view 4.
        let mut s = ab();
        let old = Request::Forward {
            view: 2,
            from: "A".into(),
            msg_seq: 99,
            op: ClientOp {
                client: 9,
                seq: 1,
                op: put("k", "old"),
            },
        };
        let v3 = view(3, "B", Some("C"));
        s.install(&v3, &["B", "C"]);
        let v4 = view(4, "C", Some("A"));
        s.install(&v4, &["C", "A"]);
        let v5 = view(5, "A", Some("B"));
        s.install(&v5, &["A", "B"]);
        assert!(is_err(&s.node("B").handle_peer(old)));
        assert_eq!(s.node("B").store().get("k"), None);
        // And a forward from a server that is not the primary of the backup's view.
        let fake = Request::Forward {
            view: 5,
            from: "C".into(),
            msg_seq: 100,
            op: ClientOp {
                client: 9,
                seq: 2,
                op: put("k", "fake"),
            },
        };
        assert!(is_err(&s.node("B").handle_peer(fake)));
    }

    #[test]
    fn delayed_old_transfer_is_rejected() {
        let mut s = ab();
        let (to, stale) = {
            // A transfer built now (empty state) but delivered late.
            let a = s.node("A");
            a.backup_synced = false;
            a.pending_transfer().unwrap()
        };
        assert_eq!(to, "B");
        // A resyncs with a newer transfer and serves a write.
        let w = s.op(1, put("k", "v"));
        assert_eq!(s.request("A", &w), Response::Ok);
        assert!(is_err(&s.node("B").handle_peer(stale)));
        assert_eq!(s.node("B").store().get("k"), Some("v"));
    }

    #[test]
    fn stale_primary_cannot_read_or_write_after_view_change() {
        // Lecture: "stale reads": 1:A,B; A cannot reach the view service; 2:B,C; client 1
        // writes to B; client 2 reads from A.
        let mut s = ab();
        let w = s.op(1, put("k", "old"));
        assert_eq!(s.request("A", &w), Response::Ok);
        let v3 = view(3, "B", Some("C"));
        s.learn("B", &v3, false);
        s.learn("C", &v3, false);
        s.install(&v3, &["B", "C"]);
        let w = s.op(2, put("k", "new"));
        assert_eq!(s.request("B", &w), Response::Ok);
        // A still thinks it is the primary of view 2.
        assert!(s.node("A").view().is_primary("A"));
        let r = s.op(3, get("k"));
        let ans = s.request("A", &r);
        assert!(is_err(&ans), "stale read served: {ans:?}");
        let w = s.op(3, put("k", "stale"));
        assert!(is_err(&s.request("A", &w)));
        assert_eq!(s.node("B").store().get("k"), Some("new"));
    }

    #[test]
    fn client_of_new_view_waits_until_backup_learns_it() {
        // Lecture's last corner case: 1:A,B 2:B,C; the view service stopped hearing from A,
        // but A, B and clients can communicate, and B has not heard of view 2 yet.
        let mut s = ab();
        let w = s.op(1, put("k", "1"));
        // A client still in view 2 (here: the old view) talks to A: served, since B is still
        // in that view too and nobody serves the new one yet.
        assert_eq!(s.request("A", &w), Response::Ok);
        // A client that knows the new view talks to B: B is not primary in its own view.
        let w2 = s.op(2, put("k", "2"));
        assert!(is_err(&s.request("B", &w2)));
        // Once B learns the new view, A is refused and B serves.
        let v3 = view(3, "B", Some("C"));
        s.learn("C", &v3, false);
        s.learn("B", &v3, false);
        s.install(&v3, &["B", "C"]);
        let w3 = s.op(3, put("k", "3"));
        assert!(is_err(&s.request("A", &w3)));
        assert_eq!(s.request("B", &w2), Response::Ok);
        assert_eq!(s.node("C").store().get("k"), Some("2"));
    }

    #[test]
    fn duplicate_write_after_two_failovers_applies_once() {
        // Lecture: "duplicate writes": 1:A,B 2:B,C 3:C,D; the client writes to A, A forwards
        // to B, A replies, the reply is dropped; B transfers to C and crashes; the client
        // resends to C.
        let mut s = ab();
        let w = s.op(7, append("k", "x"));
        assert_eq!(s.request("A", &w), Response::Ok); // the reply is "dropped"
        let v3 = view(3, "B", Some("C"));
        s.learn("C", &v3, false);
        s.learn("B", &v3, false);
        s.install(&v3, &["B", "C"]);
        s.down.insert("B".into());
        let v4 = view(4, "C", Some("D"));
        s.learn("D", &v4, false);
        s.learn("C", &v4, false);
        s.install(&v4, &["C", "D"]);
        assert_eq!(s.request("C", &w), Response::Ok);
        assert_eq!(s.node("C").store().get("k"), Some("x"), "applied once");
        assert_eq!(s.node("D").store().get("k"), Some("x"));
    }

    #[test]
    fn restarted_primary_does_not_serve_empty_state() {
        let mut s = ab();
        let w = s.op(1, put("k", "v"));
        assert_eq!(s.request("A", &w), Response::Ok);
        // A restarts: a new core that pings with 0 and is told it is primary of view 2.
        s.nodes.insert("A".into(), KvCore::new("A"));
        assert_eq!(s.node("A").ping_viewnum(), 0);
        s.learn("A", &view(2, "A", Some("B")), true);
        let r = s.op(2, get("k"));
        assert!(is_err(&s.request("A", &r)));
        assert_ne!(s.node("A").ping_viewnum(), 2, "must not acknowledge");
        // Same for a restarted primary of view 1 that had acknowledged.
        let mut s = Sim::new(&["A"]);
        s.learn("A", &view(1, "A", None), false);
        s.install(&view(1, "A", None), &["A"]);
        let w = s.op(1, put("k", "v"));
        assert_eq!(s.request("A", &w), Response::Ok);
        s.nodes.insert("A".into(), KvCore::new("A"));
        s.learn("A", &view(1, "A", None), true);
        let r = s.op(2, get("k"));
        assert!(is_err(&s.request("A", &r)));
    }

    #[test]
    fn server_that_missed_views_cannot_take_stale_state_into_new_view() {
        // B was backup of view 2, then missed views 3 and 4; it learns view 5 where it is
        // primary (impossible under the view service's rules, but the core must not trust
        // a stale state anyway).
        let mut s = ab();
        s.learn("B", &view(5, "B", Some("C")), true);
        let r = s.op(1, get("k"));
        assert!(is_err(&s.request("B", &r)));
    }

    #[test]
    fn every_operation_is_before_or_after_the_transfer() {
        let mut s = ab();
        let w = s.op(1, put("a", "1"));
        assert_eq!(s.request("A", &w), Response::Ok);
        // View 3 (A, C): C gets A's state, then later ops are forwarded to it.
        let v3 = view(3, "A", Some("C"));
        s.learn("C", &v3, false);
        s.learn("A", &v3, false);
        s.install(&v3, &["A", "C"]);
        let w = s.op(1, append("a", "2"));
        assert_eq!(s.request("A", &w), Response::Ok);
        assert_eq!(s.node("C").store().get("a"), Some("12"));
        assert_eq!(s.store("A"), s.store("C"));
        // The at-most-once table travelled with the map.
        assert_eq!(s.request("A", &w), Response::Ok);
        assert_eq!(s.node("C").store().get("a"), Some("12"));
    }

    #[test]
    fn oversized_values_are_refused() {
        let mut s = ab();
        let big = "x".repeat(MAX_VALUE + 1);
        let w = s.op(1, put("k", &big));
        assert!(matches!(
            s.request("A", &w),
            Response::Err {
                code: ErrorCode::TooLarge,
                ..
            }
        ));
        let half = "x".repeat(MAX_VALUE / 2 + 1);
        let w = s.op(1, put("k", &half));
        assert_eq!(s.request("A", &w), Response::Ok);
        let w = s.op(1, append("k", &half));
        assert!(is_err(&s.request("A", &w)), "append beyond the maximum");
        assert_eq!(s.store("A"), s.store("B"));
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
        let mut st2 = Store::from_snapshot(snap);
        st2.apply(&op(2, "b"));
        assert_eq!(st2, st);
    }
}
