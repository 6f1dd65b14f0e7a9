//! An in-process cluster over real TCP on 127.0.0.1: a view service and key/value servers
//! as threads, each server with its own fault injection, killable.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ftvm_kv::client::{get_view, Clerk, ClerkConfig};
use ftvm_kv::net::{Caller, Faults};
use ftvm_kv::protocol::{ViewReply, ViewReply as Vr};
use ftvm_kv::server::{KvServer, ServerConfig};
use ftvm_kv::vs_server::{ViewService, VsConfig};

pub const PING: Duration = Duration::from_millis(20);
pub const DEAD_PINGS: u64 = 10;
/// Generous bound for anything the cluster must eventually do.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Polls `f` until it returns `Some`, panicking with `what` after `PATIENCE`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        if start.elapsed() > PATIENCE {
            panic!("timed out waiting for {what}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

pub struct Cluster {
    pub vs: ViewService,
    pub vs_addr: String,
    pub servers: BTreeMap<String, KvServer>,
    caller: Caller,
    seed: u64,
}

impl Cluster {
    pub fn new() -> Cluster {
        let mut cfg = VsConfig::new(localhost());
        cfg.ping_interval = PING;
        cfg.dead_pings = DEAD_PINGS;
        let vs = ViewService::start(cfg).expect("start view service");
        let vs_addr = vs.addr().to_string();
        Cluster {
            vs,
            vs_addr,
            servers: BTreeMap::new(),
            caller: Caller::new(Arc::new(Faults::default()), Duration::from_secs(2)),
            seed: 1,
        }
    }

    /// Starts a server on a fresh port (or on `addr`); returns its name.
    pub fn start_server_at(&mut self, addr: SocketAddr) -> String {
        let mut cfg = ServerConfig::new(self.vs_addr.clone(), addr);
        cfg.ping_interval = PING;
        cfg.rpc_timeout = Duration::from_millis(500);
        self.seed += 1;
        cfg.faults = Arc::new(Faults::new(self.seed.wrapping_mul(0x9e37_79b9)));
        let s = KvServer::start(cfg).expect("start kv server");
        let name = s.me().to_string();
        self.servers.insert(name.clone(), s);
        name
    }

    pub fn start_server(&mut self) -> String {
        self.start_server_at(localhost())
    }

    pub fn server(&self, name: &str) -> &KvServer {
        &self.servers[name]
    }

    pub fn faults(&self, name: &str) -> Arc<Faults> {
        self.servers[name].faults().clone()
    }

    /// Crash-stops a server; returns its address.
    pub fn kill(&mut self, name: &str) -> SocketAddr {
        let mut s = self.servers.remove(name).expect("no such server");
        let addr = s.addr();
        s.kill();
        addr
    }

    pub fn view(&self) -> Option<ViewReply> {
        get_view(&self.caller, &self.vs_addr).ok()
    }

    /// Waits for an acknowledged view satisfying `pred`.
    pub fn wait_view(&self, what: &str, pred: impl Fn(&Vr) -> bool) -> ViewReply {
        wait_for(what, || self.view().filter(|r| r.acked && pred(r)))
    }

    /// Waits for an acknowledged view with a primary and a backup that are both running.
    pub fn wait_stable(&self) -> ViewReply {
        self.wait_view("a stable view with primary and backup", |r| {
            let up = |s: &Option<String>| s.as_ref().is_some_and(|s| self.servers.contains_key(s));
            up(&r.view.primary) && up(&r.view.backup)
        })
    }

    pub fn clerk_config(&self) -> ClerkConfig {
        let mut cfg = ClerkConfig::new(self.vs_addr.clone());
        cfg.retry_interval = Duration::from_millis(5);
        cfg.rpc_timeout = Duration::from_millis(1000);
        cfg.op_timeout = Some(PATIENCE);
        cfg
    }

    pub fn clerk(&self) -> Clerk {
        Clerk::new(self.clerk_config())
    }

    /// A cluster whose first server is primary and second backup, acknowledged.
    pub fn with_primary_and_backup() -> (Cluster, String, String) {
        let mut c = Cluster::new();
        let a = c.start_server();
        c.wait_view("first primary", |r| r.view.is_primary(&a));
        let b = c.start_server();
        c.wait_view("first backup", |r| {
            r.view.is_primary(&a) && r.view.is_backup(&b)
        });
        (c, a, b)
    }
}

/// Checks that `log` is made of every `tag.i;` token of each client exactly once, and in each
/// client's order. `tags` gives each client's tag and count.
pub fn check_appends(log: &str, tags: &[(String, usize)]) {
    let mut next: BTreeMap<&str, usize> = tags.iter().map(|(t, _)| (t.as_str(), 0)).collect();
    for tok in log.split(';').filter(|t| !t.is_empty()) {
        let (tag, i) = tok
            .rsplit_once('.')
            .unwrap_or_else(|| panic!("bad token {tok:?} in {log:?}"));
        let i: usize = i.parse().unwrap();
        let n = next
            .get_mut(tag)
            .unwrap_or_else(|| panic!("unknown tag {tag}"));
        assert_eq!(
            i, *n,
            "client {tag}: expected append {n}, found {i} (lost or duplicated) in {log:?}"
        );
        *n += 1;
    }
    for (tag, count) in tags {
        assert_eq!(next[tag.as_str()], *count, "client {tag}: appends lost");
    }
}
