//! The key/value server over TCP: a [`KvCore`] behind one lock, a ping thread talking to the
//! view service, and the [`Server`] loop. Each client request holds the lock for its whole
//! step, forwarding to the backup included, so operations are applied one at a time and
//! every operation is before or after a state transfer (which is sent under the same lock).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::kv::{KvCore, Step};
use crate::net::{bind_with_retry, Caller, Faults, Handler, Server};
use crate::protocol::{
    check_op_size, ClientOp, ErrorCode, Request, Response, ServerStatus, ViewReply,
};

/// Errors of the server's startup.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening address could not be bound, even after retrying for `bind_retry`.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
    /// Reading the bound address or starting a thread failed.
    #[error("cannot start the key/value server")]
    Start(#[from] io::Error),
}

/// Key/value server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The view service's address.
    pub vs: String,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The address others use to reach this server, which is also its name in views
    /// (default: the address actually listened on).
    pub advertise: Option<String>,
    /// Time between pings to the view service.
    pub ping_interval: Duration,
    /// Timeout of calls to the view service and to the backup.
    pub rpc_timeout: Duration,
    /// How long to retry binding a port still in use.
    pub bind_retry: Duration,
    /// Print view changes on stderr.
    pub verbose: bool,
    /// Faults injected into this server's incoming requests and outgoing calls (for tests).
    pub faults: Arc<Faults>,
}

impl ServerConfig {
    /// Settings for a server of the view service at `vs` listening on `listen`: 100 ms
    /// pings, 1 s call timeout, 5 s bind retry, quiet, no faults.
    pub fn new(vs: impl Into<String>, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            vs: vs.into(),
            listen,
            advertise: None,
            ping_interval: Duration::from_millis(100),
            rpc_timeout: Duration::from_millis(1000),
            bind_retry: Duration::from_secs(5),
            verbose: false,
            faults: Arc::new(Faults::default()),
        }
    }
}

#[derive(Default)]
struct Signals {
    stop: bool,
    wake: bool,
}

struct Node {
    core: Mutex<KvCore>,
    caller: Caller,
    vs: String,
    ping_interval: Duration,
    verbose: bool,
    signals: Mutex<Signals>,
    cv: Condvar,
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, KvCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signals(&self) -> MutexGuard<'_, Signals> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.signals().stop
    }

    /// Asks the ping thread to ping now if the core wants it.
    fn maybe_wake(&self, core: &mut KvCore) {
        if core.take_wants_ping() {
            self.signals().wake = true;
            self.cv.notify_all();
        }
    }

    fn call(&self, to: &str, req: &Request) -> Option<Response> {
        self.caller.call(to, req).ok()
    }

    fn client_op(&self, op: ClientOp) -> Response {
        if let Err(why) = check_op_size(&op.op) {
            return Response::err(ErrorCode::TooLarge, why);
        }
        let mut core = self.lock();
        for _ in 0..2 {
            match core.begin_client(&op) {
                Step::Reply(r) => {
                    self.maybe_wake(&mut core);
                    return r;
                }
                Step::Transfer { to, request } => {
                    let answer = self.call(&to, &request);
                    if !core.transfer_done(&request, answer.as_ref()) {
                        self.maybe_wake(&mut core);
                        return match answer {
                            // The backup is in another view: maybe we are no longer primary.
                            Some(Response::Err { detail, .. }) => Response::err(
                                ErrorCode::WrongServer,
                                format!("backup refused the state transfer: {detail}"),
                            ),
                            _ => Response::err(ErrorCode::Retry, "state transfer to backup failed"),
                        };
                    }
                }
                Step::Forward { to, request } => {
                    let answer = self.call(&to, &request);
                    let r = core.finish_client(&op, answer.as_ref());
                    self.maybe_wake(&mut core);
                    return r;
                }
            }
        }
        Response::err(ErrorCode::Retry, "backup not in sync")
    }

    /// One ping; returns whether to ping again at once.
    fn ping_once(&self) -> bool {
        let (me, num) = {
            let core = self.lock();
            (core.me().to_string(), core.ping_viewnum())
        };
        let req = Request::Ping {
            server: me,
            viewnum: num,
        };
        let Some(Response::View(reply)) = self.call(&self.vs, &req) else {
            return false;
        };
        let mut core = self.lock();
        if self.stopped() {
            return false;
        }
        self.take_view(&mut core, reply);
        core.take_wants_ping();
        core.ping_viewnum() != num
    }

    fn take_view(&self, core: &mut KvCore, reply: ViewReply) {
        let before = core.view().num;
        core.on_view(reply);
        if self.verbose && core.view().num != before {
            eprintln!("kvserver {}: {}", core.me(), core.view());
        }
        if let Some((to, request)) = core.pending_transfer() {
            let answer = self.call(&to, &request);
            let ok = core.transfer_done(&request, answer.as_ref());
            if self.verbose {
                eprintln!(
                    "kvserver {}: state transfer to {to} {}",
                    core.me(),
                    if ok { "done" } else { "failed" }
                );
            }
        }
    }

    fn ping_loop(&self) {
        let mut next = Instant::now();
        loop {
            if self.stopped() {
                return;
            }
            let again = self.ping_once();
            if again {
                continue;
            }
            next += self.ping_interval;
            let now = Instant::now();
            if next < now {
                next = now;
            }
            let mut sig = self.signals();
            // Ping at the next interval, or sooner (but not in a tight loop) when woken.
            let earliest = now + Duration::from_millis(2);
            loop {
                if sig.stop {
                    return;
                }
                let now = Instant::now();
                if now >= next || (sig.wake && now >= earliest) {
                    break;
                }
                let until = if sig.wake { earliest } else { next };
                sig = self
                    .cv
                    .wait_timeout(sig, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            sig.wake = false;
        }
    }
}

struct KvHandler(Arc<Node>);

impl Handler for KvHandler {
    fn handle(&self, req: Request, peer: Option<SocketAddr>) -> Response {
        match req {
            Request::Client(op) => self.0.client_op(op),
            other => {
                let mut core = self.0.lock();
                let r = core.handle_peer_from(other, peer.map(|p| p.ip()));
                self.0.maybe_wake(&mut core);
                r
            }
        }
    }
}

/// A running key/value server.
pub struct KvServer {
    node: Arc<Node>,
    server: Server,
    pinger: Option<JoinHandle<()>>,
    faults: Arc<Faults>,
    me: String,
}

impl KvServer {
    /// Binds, starts answering requests and starts pinging the view service.
    pub fn start(config: ServerConfig) -> Result<KvServer, ServerError> {
        let listener = bind_with_retry(config.listen, config.bind_retry).map_err(|source| {
            ServerError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let addr = listener.local_addr()?;
        let me = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let node = Arc::new(Node {
            core: Mutex::new(KvCore::new(me.clone())),
            caller: Caller::new(config.faults.clone(), config.rpc_timeout),
            vs: config.vs.clone(),
            ping_interval: config.ping_interval,
            verbose: config.verbose,
            signals: Mutex::new(Signals::default()),
            cv: Condvar::new(),
        });
        let server = Server::start(
            listener,
            Arc::new(KvHandler(node.clone())),
            config.faults.clone(),
        )?;
        let n = node.clone();
        let pinger = thread::Builder::new()
            .name(format!("ping-{me}"))
            .spawn(move || n.ping_loop())?;
        Ok(KvServer {
            node,
            server,
            pinger: Some(pinger),
            faults: config.faults,
            me,
        })
    }

    /// This server's name in views (its advertised address).
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The address listened on (with the actual port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// This server's injected faults, to change while it runs.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// What this server says about itself, as it answers `Request::Status`.
    pub fn status(&self) -> ServerStatus {
        self.node.lock().status()
    }

    /// Crash-stops the server: no more pings, no more answers, port freed. Its state is
    /// gone with it.
    pub fn kill(&mut self) {
        {
            let mut sig = self.node.signals();
            sig.stop = true;
        }
        self.node.cv.notify_all();
        self.server.stop();
        if let Some(p) = self.pinger.take() {
            let _ = p.join();
        }
        self.node.caller.clear();
    }

    /// Waits until the ping thread ends (never, unless killed).
    pub fn wait(mut self) {
        if let Some(p) = self.pinger.take() {
            let _ = p.join();
        }
    }
}

impl Drop for KvServer {
    fn drop(&mut self) {
        self.kill();
    }
}
