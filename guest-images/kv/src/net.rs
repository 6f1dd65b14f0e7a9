//! The TCP layer: framed request/response calls with timeouts, a threaded server loop, and
//! fault injection.
//!
//! Every node (view service, key/value server, client) owns a [`Faults`] handle. Faults act
//! at the node's edges, so tests can make the network lose exactly what they want:
//! - incoming requests can be dropped before they are handled, or their replies dropped
//!   after they were handled (the connection is closed instead of answered), each with a
//!   given probability from a seeded generator;
//! - a node can be made unreachable (every incoming connection is closed at once);
//! - outgoing calls to chosen addresses can be blocked (they fail at once), which together
//!   with the above partitions a node from the view service, from its peers, or from all.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::protocol::{
    decode, encode, read_frame, write_frame, ErrorCode, ProtocolError, Request, Response,
};

/// Most connections a server handles at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 128;
/// A connection idle for this long is closed by the server.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad address {0:?} (expected a numeric IP:PORT)")]
    BadAddress(String),
    #[error("{0} is unreachable (injected partition)")]
    Blocked(String),
    #[error("call to {addr} failed")]
    Call {
        addr: String,
        #[source]
        source: ProtocolError,
    },
}

/// Parses a numeric `IP:PORT` (no name resolution).
pub fn parse_addr(addr: &str) -> Result<SocketAddr, NetError> {
    addr.parse()
        .map_err(|_| NetError::BadAddress(addr.to_string()))
}

/// What happens to one incoming request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Serve,
    DropRequest,
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

    pub fn unblock(&self, addr: &str) {
        self.config().blocked.remove(addr);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        *self.config() = FaultConfig::default();
        self.set_unreachable(false);
    }

    pub fn is_unreachable(&self) -> bool {
        self.unreachable.load(Ordering::SeqCst)
    }

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

/// Outgoing calls with a small pool of open connections per destination.
#[derive(Debug)]
pub struct Caller {
    faults: Arc<Faults>,
    timeout: Duration,
    pool: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl Caller {
    pub fn new(faults: Arc<Faults>, timeout: Duration) -> Caller {
        Caller {
            faults,
            timeout,
            pool: Mutex::new(HashMap::new()),
        }
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A pooled connection to `addr` that the server has not closed.
    fn take(&self, addr: &str) -> Option<TcpStream> {
        loop {
            let stream = self
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(addr)
                .and_then(Vec::pop)?;
            if is_open(&stream) {
                return Some(stream);
            }
        }
    }

    fn put_back(&self, addr: &str, stream: TcpStream) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let v = pool.entry(addr.to_string()).or_default();
        if v.len() < 4 {
            v.push(stream);
        }
    }

    /// Drops every pooled connection.
    pub fn clear(&self) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Sends `req` to `addr` and waits (at most the timeout) for the answer. Never retries:
    /// a failed call may or may not have been handled.
    pub fn call(&self, addr: &str, req: &Request) -> Result<Response, NetError> {
        if self.faults.is_blocked(addr) || self.faults.is_unreachable() {
            return Err(NetError::Blocked(addr.to_string()));
        }
        let payload = encode(req).map_err(|source| NetError::Call {
            addr: addr.to_string(),
            source,
        })?;
        let stream = match self.take(addr) {
            Some(stream) => stream,
            None => {
                let sa = parse_addr(addr)?;
                let stream =
                    TcpStream::connect_timeout(&sa, self.timeout).map_err(|e| NetError::Call {
                        addr: addr.to_string(),
                        source: e.into(),
                    })?;
                let _ = stream.set_nodelay(true);
                stream
            }
        };
        match self.exchange(stream, &payload) {
            Ok((resp, stream)) => {
                self.put_back(addr, stream);
                Ok(resp)
            }
            Err(source) => Err(NetError::Call {
                addr: addr.to_string(),
                source,
            }),
        }
    }

    fn exchange(
        &self,
        mut stream: TcpStream,
        payload: &[u8],
    ) -> Result<(Response, TcpStream), ProtocolError> {
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        write_frame(&mut stream, payload)?;
        let answer = read_frame(&mut stream)?;
        Ok((decode(&answer)?, stream))
    }
}

/// Whether the peer has not closed `stream` (nothing unread is pending on an idle one).
fn is_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let open = matches!(stream.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    open && stream.set_nonblocking(false).is_ok()
}

/// Handles decoded requests of a server.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Response;
}

struct ServerShared {
    handler: Arc<dyn Handler>,
    faults: Arc<Faults>,
    stopped: AtomicBool,
    connections: AtomicUsize,
    next_conn: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
}

/// A running TCP server: accepts connections and answers their requests, one thread per
/// connection.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<ServerShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `handler` on `listener`, with `faults` applied to every incoming request.
    pub fn start(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        faults: Arc<Faults>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(ServerShared {
            handler,
            faults,
            stopped: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("accept-{addr}"))
            .spawn(move || accept_loop(listener, s))?;
        Ok(Server {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every open connection and frees the port.
    pub fn stop(&mut self) {
        if self.shared.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the acceptor with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for (_, s) in self
            .shared
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<ServerShared>) {
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else {
            // Out of file descriptors and the like: back off a little.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.faults.is_unreachable()
            || shared.connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS
        {
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, clone);
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let s = shared.clone();
        let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
            serve_connection(stream, &s);
            s.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            s.connections.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            shared
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }
}

fn reply(stream: &mut TcpStream, resp: &Response) -> bool {
    match encode(resp) {
        Ok(bytes) => write_frame(stream, &bytes).is_ok(),
        Err(_) => false,
    }
}

fn serve_connection(mut stream: TcpStream, shared: &ServerShared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    loop {
        let payload = match read_frame(&mut stream) {
            Ok(p) => p,
            Err(ProtocolError::TooLarge(n)) => {
                // The rest of the stream cannot be framed: answer and close.
                reply(
                    &mut stream,
                    &Response::err(
                        ErrorCode::TooLarge,
                        format!("frame of {n} bytes exceeds the maximum"),
                    ),
                );
                break;
            }
            Err(_) => break,
        };
        if shared.stopped.load(Ordering::SeqCst) || shared.faults.is_unreachable() {
            break;
        }
        let fate = shared.faults.fate();
        if fate == Fate::DropRequest {
            break;
        }
        let resp = match decode::<Request>(&payload) {
            Ok(req) => shared.handler.handle(req),
            Err(e) => Response::err(ErrorCode::BadRequest, e.to_string()),
        };
        if fate == Fate::DropReply
            || shared.stopped.load(Ordering::SeqCst)
            || shared.faults.is_unreachable()
        {
            break;
        }
        if !reply(&mut stream, &resp) {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Binds `addr`, retrying while the port is still in use for up to `retry_for` (a restarted
/// server reusing its address).
pub fn bind_with_retry(addr: SocketAddr, retry_for: Duration) -> io::Result<TcpListener> {
    let deadline = std::time::Instant::now() + retry_for;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A stop flag that sleeping threads can wait on.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl StopSignal {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d`, or less if stopped; returns whether stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            stopped = self
                .cv
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *stopped
    }
}
