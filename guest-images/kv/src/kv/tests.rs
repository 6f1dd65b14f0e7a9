//! The lecture's corner cases, on a deterministic little world of cores.

use super::*;
use crate::protocol::{Op, MAX_VALUE};
use std::collections::{BTreeMap, BTreeSet};

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
