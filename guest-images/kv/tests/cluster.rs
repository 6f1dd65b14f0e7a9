//! The key/value service over real TCP, servers as threads with injected faults.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ftvm_kv::linearizability;
use ftvm_kv::net::{Caller, Faults};
use ftvm_kv::protocol::{ClientOp, ErrorCode, Op, Request, Response};
use ftvm_kv::workload::{self, Mixed};

/// Sends one client request straight to `addr`, as a client with an outdated view would.
fn direct(addr: &str, client: u64, seq: u64, op: Op) -> Response {
    let caller = Caller::new(Arc::new(Faults::default()), Duration::from_secs(2));
    caller
        .call(addr, &Request::Client(ClientOp { client, seq, op }))
        .unwrap_or_else(|e| panic!("call to {addr}: {e}"))
}

fn get(key: &str) -> Op {
    Op::Get { key: key.into() }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
    }
}

#[test]
fn basic_failover_keeps_data() {
    let (mut c, a, b) = Cluster::with_primary_and_backup();
    let mut ck = c.clerk();
    ck.put("k", "v").unwrap();
    ck.append("k", "w").unwrap();
    assert_eq!(ck.get("k").unwrap(), "vw");
    assert_eq!(ck.get("missing").unwrap(), "");
    c.kill(&a);
    c.wait_view("backup promoted", |r| r.view.is_primary(&b));
    assert_eq!(ck.get("k").unwrap(), "vw");
}

#[test]
fn at_most_once_put_append_with_dropped_replies() {
    let (mut c, a, b) = Cluster::with_primary_and_backup();
    let idle = c.start_server();
    for s in [&a, &b, &idle] {
        // Replies to clients and forwards to the backup are lost; requests too.
        c.faults(s).set_drop_replies(0.3);
        c.faults(s).set_drop_requests(0.1);
    }
    let mut ck = c.clerk();
    let mut expected = String::new();
    for i in 0..40 {
        let tok = format!("a.{i};");
        ck.append("log", &tok).unwrap();
        expected.push_str(&tok);
        ck.put("counter", &i.to_string()).unwrap();
    }
    let (mut requests, mut replies) = (0, 0);
    for s in [&a, &b, &idle] {
        let (q, p) = c.faults(s).dropped();
        requests += q;
        replies += p;
        c.faults(s).heal();
    }
    // Each of these was a retry, by the client or (for forwards) by the primary's resync.
    assert!(
        requests > 0 && replies > 5,
        "too few drops: {requests} {replies}"
    );
    assert_eq!(ck.get("log").unwrap(), expected);
    assert_eq!(ck.get("counter").unwrap(), "39");
    // The backup agrees: let it take over and read again.
    let primary = c.wait_stable().view.primary.unwrap();
    c.kill(&primary);
    c.wait_view("new primary", |r| {
        r.view.primary.as_deref().is_some_and(|p| p != primary)
    });
    assert_eq!(ck.get("log").unwrap(), expected);
    check_appends(&expected, &[("a".into(), 40)]);
}

#[test]
fn concurrent_clients_on_the_same_keys() {
    let (mut c, _a, _b) = Cluster::with_primary_and_backup();
    const CLIENTS: usize = 5;
    const OPS: usize = 30;
    let cfg = c.clerk_config();
    let last_puts = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let cfg = cfg.clone();
            let last_puts = last_puts.clone();
            thread::spawn(move || {
                let mut ck = ftvm_kv::client::Clerk::new(cfg);
                let mut last = String::new();
                for i in 0..OPS {
                    ck.append("shared", &format!("c{n}.{i};")).unwrap();
                    last = format!("c{n}-{i}");
                    ck.put("x", &last).unwrap();
                    ck.get("x").unwrap();
                }
                last_puts.lock().unwrap().push(last);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut ck = c.clerk();
    let log = ck.get("shared").unwrap();
    let tags: Vec<_> = (0..CLIENTS).map(|n| (format!("c{n}"), OPS)).collect();
    check_appends(&log, &tags);
    let x = ck.get("x").unwrap();
    assert!(
        last_puts.lock().unwrap().contains(&x),
        "x = {x:?} is not any client's last put"
    );
    // Primary and backup agree on both keys.
    let primary = c.wait_stable().view.primary.unwrap();
    c.kill(&primary);
    c.wait_view("new primary", |r| {
        r.view.primary.as_deref().is_some_and(|p| p != primary)
    });
    assert_eq!(ck.get("shared").unwrap(), log);
    assert_eq!(ck.get("x").unwrap(), x);
}

#[test]
fn partitioned_old_primary_cannot_serve() {
    // A is primary, B backup. A loses the view service but still reaches B and clients.
    let (mut c, a, b) = Cluster::with_primary_and_backup();
    let mut ck = c.clerk();
    ck.put("k", "old").unwrap();
    c.faults(&a).block(&c.vs_addr);
    let cc = c.start_server();
    c.wait_view("B promoted with C as backup", |r| {
        r.view.is_primary(&b) && r.view.is_backup(&cc)
    });
    ck.put("k", "new").unwrap();
    // A still believes it is the primary.
    assert!(c.server(&a).status().view.is_primary(&a));
    // A client with the old view asks A: refused (B, now in a newer view, rejects A's
    // forward or state transfer), not answered with the stale value.
    match direct(&a, 77, 1, get("k")) {
        Response::Err { code, .. } => {
            assert!(matches!(code, ErrorCode::WrongServer | ErrorCode::Retry))
        }
        r => panic!("stale primary answered a read: {r:?}"),
    }
    match direct(&a, 77, 2, put("k", "stale")) {
        Response::Err { .. } => {}
        r => panic!("stale primary accepted a write: {r:?}"),
    }
    assert_eq!(ck.get("k").unwrap(), "new");
    assert!(
        c.server(&a).status().view.is_primary(&a),
        "still partitioned"
    );
}

#[test]
fn fully_partitioned_old_primary_cannot_serve() {
    // A loses the view service and B; clients can still reach it.
    let (mut c, a, b) = Cluster::with_primary_and_backup();
    let mut ck = c.clerk();
    ck.put("k", "old").unwrap();
    c.faults(&a).block(&c.vs_addr);
    c.faults(&a).block(&b);
    // A is refused right away: its backup is unreachable.
    assert!(matches!(direct(&a, 77, 1, get("k")), Response::Err { .. }));
    let cc = c.start_server();
    c.wait_view("B promoted with C as backup", |r| {
        r.view.is_primary(&b) && r.view.is_backup(&cc)
    });
    ck.put("k", "new").unwrap();
    for seq in 2..10 {
        assert!(matches!(
            direct(&a, 77, seq, get("k")),
            Response::Err { .. }
        ));
        assert!(matches!(
            direct(&a, 77, seq + 100, put("k", "stale")),
            Response::Err { .. }
        ));
    }
    assert_eq!(ck.get("k").unwrap(), "new");
}

#[test]
fn partitioned_primary_without_backup_stays_the_only_primary() {
    // View 1 = (A, -). A loses the view service. C starts: the view service may name it
    // backup, but can never make it primary, since A never acknowledges that view.
    let mut c = Cluster::new();
    let a = c.start_server();
    c.wait_view("first primary", |r| r.view.is_primary(&a));
    let mut ck = c.clerk();
    ck.put("k", "1").unwrap();
    c.faults(&a).block(&c.vs_addr);
    let cc = c.start_server();
    let deadline = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < deadline {
        let r = c.view().unwrap();
        assert!(r.view.is_primary(&a), "primary changed: {}", r.view);
        assert!(matches!(
            direct(&cc, 5, 1, get("k")),
            Response::Err {
                code: ErrorCode::WrongServer,
                ..
            }
        ));
        thread::sleep(Duration::from_millis(50));
    }
    // A, the only primary, keeps serving clients that reach it.
    assert_eq!(direct(&a, 5, 2, put("k", "2")), Response::Ok);
    // Once A is back, it hands its state to C; C can take over with everything.
    c.faults(&a).heal();
    c.wait_view("A acknowledged C as backup", |r| {
        r.view.is_primary(&a) && r.view.is_backup(&cc)
    });
    c.kill(&a);
    c.wait_view("C promoted", |r| r.view.is_primary(&cc));
    assert_eq!(ck.get("k").unwrap(), "2");
}

#[test]
fn restarted_servers_on_same_address_rejoin() {
    let (mut c, a, b) = Cluster::with_primary_and_backup();
    let mut ck = c.clerk();
    ck.put("k", "v").unwrap();
    // The backup crashes and comes back at once on its address: it pings with 0, is
    // treated as failed, and gets the state again in a new view.
    let before = c.view().unwrap().view.num;
    let addr = c.kill(&b);
    let b2 = c.start_server_at(addr);
    assert_eq!(b2, b);
    c.wait_view("restarted backup resynced", |r| {
        r.view.num > before && r.view.is_primary(&a) && r.view.is_backup(&b)
    });
    // Now the primary crashes and restarts: the backup takes over with the data.
    let addr = c.kill(&a);
    c.start_server_at(addr);
    c.wait_view("backup promoted, restarted primary as backup", |r| {
        r.view.is_primary(&b) && r.view.is_backup(&a)
    });
    assert_eq!(ck.get("k").unwrap(), "v");
    c.kill(&b);
    c.wait_view("restarted A promoted", |r| r.view.is_primary(&a));
    assert_eq!(ck.get("k").unwrap(), "v");
}

/// Clients appending while servers are killed one at a time.
#[test]
fn repeated_crashes_of_primary_and_backup_under_concurrent_clients() {
    let (mut c, _a, _b) = Cluster::with_primary_and_backup();
    c.start_server();
    const CLIENTS: usize = 3;
    const APPENDS: usize = 60;
    let cfg = c.clerk_config();
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let cfg = cfg.clone();
            let done = done.clone();
            thread::spawn(move || {
                let mut ck = ftvm_kv::client::Clerk::new(cfg);
                for i in 0..APPENDS {
                    ck.append("log", &format!("c{n}.{i};")).unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut min_view = 0;
    for round in 0..6 {
        let r = c.wait_view("a stable view after the last crash", |r| {
            r.view.num >= min_view
                && r.view
                    .primary
                    .as_ref()
                    .is_some_and(|p| c.servers.contains_key(p))
                && r.view
                    .backup
                    .as_ref()
                    .is_some_and(|b| c.servers.contains_key(b))
        });
        min_view = r.view.num + 1;
        let victim = if round % 2 == 0 {
            r.view.primary.unwrap()
        } else {
            r.view.backup.unwrap()
        };
        c.kill(&victim);
        c.start_server();
        // Let the clients make some progress before the next crash.
        let seen = done.load(Ordering::SeqCst);
        wait_for("client progress", || {
            let now = done.load(Ordering::SeqCst);
            (now >= seen + 5 || now == CLIENTS * APPENDS).then_some(())
        });
    }
    for h in handles {
        h.join().unwrap();
    }
    let log = c.clerk().get("log").unwrap();
    let tags: Vec<_> = (0..CLIENTS).map(|n| (format!("c{n}"), APPENDS)).collect();
    check_appends(&log, &tags);
}

#[test]
fn linearizable_history_under_faults_and_failover() {
    let (mut c, a, b) = Cluster::with_primary_and_backup();
    let idle = c.start_server();
    for s in [&a, &b, &idle] {
        c.faults(s).set_drop_replies(0.1);
    }
    const CLIENTS: u64 = 4;
    const OPS: u64 = 40;
    let spec = Mixed {
        clients: CLIENTS,
        ops_per_client: OPS,
        keys: 2,
        seed: 17,
    };
    let done = Arc::new(AtomicUsize::new(0));
    let cfg = c.clerk_config();
    let run = thread::spawn({
        let done = done.clone();
        move || {
            workload::run_mixed(
                &cfg,
                &spec,
                &|_, _| {
                    done.fetch_add(1, Ordering::SeqCst);
                },
                &|| false,
            )
        }
    });
    // Halfway through, the primary crashes.
    wait_for("half of the operations", || {
        (done.load(Ordering::SeqCst) >= (CLIENTS * OPS / 2) as usize).then_some(())
    });
    let primary = c.view().unwrap().view.primary.unwrap();
    c.kill(&primary);
    let history = run.join().unwrap().expect("every operation completes").ops;
    assert_eq!(history.len(), (CLIENTS * OPS) as usize);
    linearizability::check(&history).expect("history must be linearizable");
}
