//! The view service over TCP: [`ViewCore`] behind a lock, a ticker thread calling
//! [`ViewCore::tick`] every ping interval, and the [`Server`] loop answering `Ping` and
//! `GetView`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::net::{bind_with_retry, parse_addr, Faults, Handler, Server, StopSignal};
use crate::protocol::{ErrorCode, Request, Response};
use crate::viewservice::ViewCore;

/// Longest server name (address) accepted in a ping.
pub const MAX_NAME: usize = 256;

/// Checks that a pinging server's name is an address a server can have: the primary sends
/// its state to the backup's name and clients call the primary's, so a name that is not a
/// reachable `IP:PORT` (garbage, port 0, 0.0.0.0, a multicast or broadcast address) would
/// only make a view nobody can use. A refused ping has no effect on the view service.
fn check_name(server: &str) -> Result<(), String> {
    if server.is_empty() || server.len() > MAX_NAME {
        return Err(format!("server name must be 1 to {MAX_NAME} bytes"));
    }
    let addr = parse_addr(server).map_err(|e| e.to_string())?;
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if addr.port() == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!("{server} is not an address a server can listen on"));
    }
    Ok(())
}

/// Errors of the view service's startup.
#[derive(Debug, thiserror::Error)]
pub enum VsError {
    /// The listening address could not be bound, even after retrying for 5 s.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
    /// Reading the bound address or starting a thread failed.
    #[error("cannot start the view service")]
    Start(#[from] io::Error),
}

/// View service settings.
#[derive(Clone, Debug)]
pub struct VsConfig {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Time between ticks: the servers' ping interval.
    pub ping_interval: Duration,
    /// Ticks without a ping after which a server is dead.
    pub dead_pings: u64,
    /// Print view changes on stderr.
    pub verbose: bool,
}

impl VsConfig {
    /// Settings to listen on `listen`: 100 ms ticks, dead after 5 silent ticks, quiet.
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
            Request::Ping { server, viewnum } => {
                if let Err(why) = check_name(&server) {
                    return Response::err(ErrorCode::BadRequest, why);
                }
                let before = core.view().num;
                match core.try_ping(&server, viewnum) {
                    Ok(r) => {
                        self.0.log_change(before, &core);
                        Response::View(r)
                    }
                    Err(e) => Response::err(ErrorCode::BadRequest, e.to_string()),
                }
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

    /// The address listened on (with the actual port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The faults injected into the service's incoming requests, to change while it runs.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_from_a_name_that_is_not_a_server_address_has_no_effect() {
        // Fails before the fix: any string of 1 to 256 bytes became primary of view 1.
        let shared = Arc::new(VsShared {
            core: Mutex::new(ViewCore::new(3)),
            verbose: false,
            stop: StopSignal::default(),
        });
        let h = VsHandler(shared.clone());
        let ping = |server: &str, viewnum| Request::Ping {
            server: server.into(),
            viewnum,
        };
        for bad in [
            "",
            "not-an-address",
            "localhost:7001",
            "127.0.0.1:0",
            "0.0.0.0:7001",
            "224.0.0.1:7001",
            "255.255.255.255:7001",
        ] {
            let r = h.handle(ping(bad, 0), None);
            assert!(
                matches!(
                    r,
                    Response::Err {
                        code: ErrorCode::BadRequest,
                        ..
                    }
                ),
                "{bad:?}: {r:?}"
            );
        }
        assert_eq!(shared.core.lock().unwrap().view().num, 0);
        // A future view number is refused too, with an error.
        let r = h.handle(ping("10.0.2.15:7001", 5), None);
        assert!(matches!(r, Response::Err { .. }), "{r:?}");
        let r = h.handle(ping("10.0.2.15:7001", 0), None);
        assert!(matches!(r, Response::View(v) if v.view.num == 1));
    }
}
