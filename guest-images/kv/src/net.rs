//! The TCP layer: framed request/response calls with timeouts, a threaded server loop, and
//! the fault injection of [`crate::faults`] applied at each node's edges.
//!
//! Every read of a frame has a deadline for the whole frame, not just for each read: a
//! server waits [`IDLE_TIMEOUT`] for a request to begin and then [`FRAME_TIMEOUT`] for the
//! rest of it; a caller waits its timeout for the answer to begin and as long again for the
//! rest. A peer that trickles bytes is cut off there.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub use crate::faults::{Fate, Faults};
use crate::protocol::{
    decode, encode, read_frame_within, write_frame, ErrorCode, ProtocolError, Request, Response,
};

/// Most connections a server handles at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 128;
/// A connection idle for this long is closed by the server.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Once a request's first byte arrived, the whole frame must arrive within this (a full
/// 16 MiB state transfer needs only ~1.6 MB/s), or the server closes the connection.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The address is not a numeric `IP:PORT` (the address given).
    #[error("bad address {0:?} (expected a numeric IP:PORT)")]
    BadAddress(String),
    /// Injected faults block calls to this address, or make the caller unreachable.
    #[error("{0} is unreachable (injected partition)")]
    Blocked(String),
    /// Connecting, sending or receiving the answer failed: the request may or may not have
    /// been handled.
    #[error("call to {addr} failed")]
    Call {
        /// The address called.
        addr: String,
        /// What failed.
        #[source]
        source: ProtocolError,
    },
}

/// Parses a numeric `IP:PORT` (no name resolution).
pub fn parse_addr(addr: &str) -> Result<SocketAddr, NetError> {
    addr.parse()
        .map_err(|_| NetError::BadAddress(addr.to_string()))
}

/// Outgoing calls with a small pool of open connections per destination.
#[derive(Debug)]
pub struct Caller {
    faults: Arc<Faults>,
    timeout: Duration,
    pool: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl Caller {
    /// Calls under `faults`, each step of a call (connect, send, answer begins, rest of
    /// the answer) limited to `timeout`.
    pub fn new(faults: Arc<Faults>, timeout: Duration) -> Caller {
        Caller {
            faults,
            timeout,
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// The faults applied to this caller's calls.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The limit on each step of a call.
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
        let answer = read_frame_within(&mut stream, self.timeout, self.timeout)?;
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
    /// Answers `req`, which came over a connection from `peer` (its source address, when
    /// the socket could tell).
    fn handle(&self, req: Request, peer: Option<SocketAddr>) -> Response;
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

    /// The address listened on (with the actual port when 0 was asked).
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

    /// Whether [`Server::stop`] has been called.
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
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    loop {
        let payload = match read_frame_within(&mut stream, IDLE_TIMEOUT, FRAME_TIMEOUT) {
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
            Ok(req) => shared.handler.handle(req, peer),
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
    /// Sets the flag and wakes every sleeper.
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Whether [`StopSignal::stop`] has been called.
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
