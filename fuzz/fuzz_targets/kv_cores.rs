//! The key/value service's pure cores driven by random message sequences: a `ViewCore`
//! pinged by any server with any view number and ticked, and three `KvCore`s fed its
//! views (or forged ones), client operations, the forwards and transfers they produce
//! (delivered, dropped or answered with anything), and arbitrary decoded peer requests.
//!
//! Besides "never panics": the view service's view moves one number at a time, only once
//! its primary acknowledged the current one, the new primary is one of the old view's
//! members, and primary and backup differ; a transfer a backup accepts leaves its store
//! equal to the transferred snapshot; a store never holds more than its limit.
//!
//! Input: byte 0 sets the view service's dead-ping count, then operations (one byte each
//! and their arguments, see `step`).

#![no_main]

use ftvm_fuzz::Ops;
use ftvm_kv::kv::{KvCore, Step};
use ftvm_kv::protocol::{self, ClientOp, Op, Request, Response, View, ViewReply};
use ftvm_kv::viewservice::ViewCore;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = ["A", "B", "C", "D"];

fn name(ops: &mut Ops) -> String {
    let b = ops.u8();
    match NAMES.get(usize::from(b % 5)) {
        Some(n) => (*n).to_owned(),
        None => String::from_utf8_lossy(ops.bytes(usize::from(b >> 4))).into_owned(),
    }
}

fn client_op(ops: &mut Ops) -> ClientOp {
    let what = ops.u8();
    let key = String::from_utf8_lossy(ops.bytes(usize::from(what >> 4))).into_owned();
    let client = u64::from(ops.u8() % 4);
    let seq = u64::from(ops.u8());
    let value = "v".repeat(usize::from(ops.u8()));
    let op = match what % 3 {
        0 => Op::Get { key },
        1 => Op::Put { key, value },
        _ => Op::Append { key, value },
    };
    ClientOp { client, seq, op }
}

/// What a peer answers: the real core's answer, nothing (dropped), or anything decoded.
fn answer(ops: &mut Ops, real: Response) -> Option<Response> {
    match ops.u8() % 4 {
        0 => None,
        1 => {
            let n = usize::from(ops.u8());
            protocol::decode::<Response>(ops.bytes(n)).ok()
        }
        _ => Some(real),
    }
}

/// `acking`: the step was a ping from the old view's primary for that view, which
/// acknowledges it (and may move past it at once).
fn check_view_change(old: &ViewReply, new: &ViewReply, acking: bool) {
    let (o, n) = (&old.view, &new.view);
    assert!(n.num >= o.num, "view went back from {o:?} to {n:?}");
    if n.num != o.num {
        assert_eq!(n.num, o.num + 1, "skipped a view: {o:?} to {n:?}");
        assert!(!new.acked, "a new view starts unacknowledged");
        if o.num > 0 {
            assert!(
                old.acked || acking,
                "moved past an unacknowledged view: {o:?} to {n:?}"
            );
            let p = n.primary.as_deref().expect("a later view has a primary");
            assert!(o.is_primary(p) || o.is_backup(p), "{p} had no state: {o:?} to {n:?}");
        }
    }
    if let (Some(p), Some(b)) = (&n.primary, &n.backup) {
        assert_ne!(p, b, "primary and backup are one server: {n:?}");
    }
}

/// Deliver a server-to-server request from core `from` to core `to` and return the answer.
fn deliver(cores: &mut [KvCore], to: &str, request: &Request) -> Option<Response> {
    let target = cores.iter_mut().find(|c| c.me() == to)?;
    let response = target.handle_peer(request.clone());
    if let (Request::Transfer { snapshot, .. }, Response::Ok) = (request, &response) {
        assert_eq!(&target.store().snapshot(), snapshot, "accepted transfer not applied");
    }
    Some(response)
}

fn step(ops: &mut Ops, vs: &mut ViewCore, cores: &mut [KvCore]) {
    let what = ops.u8();
    let i = usize::from(ops.u8()) % cores.len();
    match what % 8 {
        0 => {
            let before = vs.reply();
            let viewnum = match ops.u8() % 4 {
                0 => 0,
                1 => before.view.num,
                2 => before.view.num.saturating_sub(1),
                _ => ops.u64(),
            };
            let server = name(ops);
            vs.ping(&server, viewnum);
            let acking = before.view.is_primary(&server) && viewnum == before.view.num;
            check_view_change(&before, &vs.reply(), acking);
        }
        1 => {
            let before = vs.reply();
            vs.tick();
            check_view_change(&before, &vs.reply(), false);
        }
        2 => cores[i].on_view(vs.reply()),
        3 => {
            // A forged view.
            let view = View {
                num: ops.u64() % 8,
                primary: Some(name(ops)),
                backup: (ops.u8() % 2 == 0).then(|| name(ops)),
            };
            let acked = ops.u8() % 2 == 0;
            cores[i].on_view(ViewReply { view, acked });
        }
        4 => {
            let op = client_op(ops);
            match cores[i].begin_client(&op) {
                Step::Reply(_) => {}
                Step::Transfer { to, request } => {
                    let real = deliver(cores, &to, &request);
                    let a = real.and_then(|r| answer(ops, r));
                    cores[i].transfer_done(&request, a.as_ref());
                }
                Step::Forward { to, request } => {
                    let real = deliver(cores, &to, &request);
                    let a = real.and_then(|r| answer(ops, r));
                    cores[i].finish_client(&op, a.as_ref());
                }
            }
        }
        5 => {
            if let Some((to, request)) = cores[i].pending_transfer() {
                let real = deliver(cores, &to, &request);
                let a = real.and_then(|r| answer(ops, r));
                cores[i].transfer_done(&request, a.as_ref());
            }
        }
        6 => {
            // Any request a peer could send, decoded from the input.
            let n = usize::from(ops.u16() % 512);
            if let Ok(request) = protocol::decode::<Request>(ops.bytes(n)) {
                cores[i].handle_peer(request);
            }
        }
        _ => {
            let _ = cores[i].take_wants_ping();
            let _ = cores[i].ping_viewnum();
        }
    }
    let status = cores[i].status();
    assert_eq!(status.keys, cores[i].store().len() as u64);
    let bytes: usize = cores[i]
        .store()
        .snapshot()
        .data
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert!(bytes <= protocol::MAX_STORE_BYTES, "store over its limit: {bytes}");
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut vs = ViewCore::new(u64::from(ops.u8() % 5) + 1);
    let mut cores: Vec<KvCore> = NAMES[..3].iter().map(|n| KvCore::new(*n)).collect();
    let mut steps = 0;
    while !ops.is_empty() && steps < 2000 {
        steps += 1;
        step(&mut ops, &mut vs, &mut cores);
    }
});
