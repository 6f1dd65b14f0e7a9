//! The view service over TCP: [`ViewCore`] behind a lock, a ticker thread calling
//! [`ViewCore::tick`] every ping interval, and the [`Server`] loop answering `Ping` and
//! `GetView`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::net::{bind_with_retry, Faults, Handler, Server, StopSignal};
use crate::protocol::{ErrorCode, Request, Response};
use crate::viewservice::ViewCore;

/// Longest server name (address) accepted in a ping.
pub const MAX_NAME: usize = 256;

/// Errors of the view service's startup.
#[derive(Debug, thiserror::Error)]
pub enum VsError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the view service")]
    Start(#[from] io::Error),
}

/// View service settings.
#[derive(Clone, Debug)]
pub struct VsConfig {
    pub listen: SocketAddr,
    pub ping_interval: Duration,
    pub dead_pings: u64,
    /// Print view changes on stderr.
    pub verbose: bool,
}

impl VsConfig {
    pub fn new(listen: SocketAddr) -> VsConfig {
        VsConfig {
            listen,
            ping_interval: Duration::from_millis(100),
            dead_pings: 5,
            verbose: false,
        }
    }
}

struct VsShared {
    core: Mutex<ViewCore>,
    verbose: bool,
    stop: StopSignal,
}

impl VsShared {
    fn log_change(&self, before: u64, core: &ViewCore) {
        if self.verbose && core.view().num != before {
            eprintln!("viewservice: {}", core.view());
        }
    }
}

struct VsHandler(Arc<VsShared>);

impl Handler for VsHandler {
    fn handle(&self, req: Request, _peer: Option<SocketAddr>) -> Response {
        let mut core = self.0.core.lock().unwrap_or_else(|e| e.into_inner());
        match req {
            Request::Ping { server, .. } if server.is_empty() || server.len() > MAX_NAME => {
                Response::err(
                    ErrorCode::BadRequest,
                    format!("server name must be 1 to {MAX_NAME} bytes"),
                )
            }
            Request::Ping { server, viewnum } => {
                let before = core.view().num;
                let r = core.ping(&server, viewnum);
                self.0.log_change(before, &core);
                Response::View(r)
            }
            Request::GetView => Response::View(core.reply()),
            _ => Response::err(
                ErrorCode::BadRequest,
                "the view service handles only Ping and GetView",
            ),
        }
    }
}

/// A running view service.
pub struct ViewService {
    server: Server,
    shared: Arc<VsShared>,
    ticker: Option<JoinHandle<()>>,
    faults: Arc<Faults>,
    stopped: AtomicBool,
}

impl ViewService {
    /// Starts the view service (binding `config.listen`, port 0 for any free port).
    pub fn start(config: VsConfig) -> Result<ViewService, VsError> {
        let listener =
            bind_with_retry(config.listen, Duration::from_secs(5)).map_err(|source| {
                VsError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let shared = Arc::new(VsShared {
            core: Mutex::new(ViewCore::new(config.dead_pings)),
            verbose: config.verbose,
            stop: StopSignal::default(),
        });
        let faults = Arc::new(Faults::default());
        let server = Server::start(
            listener,
            Arc::new(VsHandler(shared.clone())),
            faults.clone(),
        )?;
        let s = shared.clone();
        let interval = config.ping_interval;
        let ticker = thread::Builder::new()
            .name("vs-ticker".into())
            .spawn(move || {
                while !s.stop.sleep(interval) {
                    let mut core = s.core.lock().unwrap_or_else(|e| e.into_inner());
                    let before = core.view().num;
                    core.tick();
                    s.log_change(before, &core);
                }
            })?;
        Ok(ViewService {
            server,
            shared,
            ticker: Some(ticker),
            faults,
            stopped: AtomicBool::new(false),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Stops the service and frees its port.
    pub fn stop(&mut self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.stop.stop();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.server.stop();
    }
}

impl Drop for ViewService {
    fn drop(&mut self) {
        self.stop();
    }
}
