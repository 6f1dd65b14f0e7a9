//! A tiny HTTP/1.x responder for `GET /metrics`, on a thread of its own.
//!
//! Scrapers are served one at a time, each within fixed bounds: the request head may be at
//! most [`MAX_REQUEST`] bytes and must arrive within [`READ_LIMIT`] however slowly it
//! trickles, and the answer must be taken within [`WRITE_LIMIT`]. A slow or hostile client
//! thus delays the next scrape by a few seconds at most, never hangs the server or makes
//! it grow, and never touches the VM (the server only reads the [`Board`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use super::{render, Board};
use crate::ft::deadline::read_timed_out;

/// Largest request head read.
pub const MAX_REQUEST: usize = 8 << 10;
/// How long a client may take to send its request head.
pub const READ_LIMIT: Duration = Duration::from_secs(2);
/// How long a client may take to take the answer.
pub const WRITE_LIMIT: Duration = Duration::from_secs(2);

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the metrics server could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The `--metrics` address could not be listened on.
    #[error("cannot serve metrics on {addr}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why binding it failed.
        #[source]
        source: std::io::Error,
    },
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// GET (or HEAD: `body` false) /metrics.
    Metrics {
        body: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Route a complete request head (up to and including the blank line). Pure: no I/O.
pub fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::BadRequest;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Route::Metrics { body }
    } else {
        Route::NotFound
    }
}

/// Read a request head: `Ok(None)` if the client sent too much, too slowly, or nothing.
fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + READ_LIMIT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() >= MAX_REQUEST {
            return Ok(None);
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf[..(MAX_REQUEST - head.len()).min(1024)]) {
            Ok(0) => return Ok(None),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if read_timed_out(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn respond(conn: &mut TcpStream, status: &str, content_type: &str, body: &[u8], send_body: bool) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.set_write_timeout(Some(WRITE_LIMIT));
    let _ = conn.write_all(head.as_bytes());
    if send_body {
        let _ = conn.write_all(body);
    }
}

/// Serve one client.
fn handle(mut conn: TcpStream, registry: &Registry) {
    let head = match read_head(&mut conn) {
        Ok(Some(head)) => head,
        Ok(None) => {
            let msg = b"request too large, too slow or cut short\n";
            return respond(&mut conn, "400 Bad Request", "text/plain", msg, true);
        }
        Err(e) => return tracing::debug!("metrics client: {e}"),
    };
    match route(&head) {
        Route::Metrics { body } => match render(registry) {
            Ok(text) => respond(&mut conn, "200 OK", CONTENT_TYPE, text.as_bytes(), body),
            Err(_) => respond(
                &mut conn,
                "500 Internal Server Error",
                "text/plain",
                b"",
                true,
            ),
        },
        Route::NotFound => respond(
            &mut conn,
            "404 Not Found",
            "text/plain",
            b"try /metrics\n",
            true,
        ),
        Route::MethodNotAllowed => {
            respond(&mut conn, "405 Method Not Allowed", "text/plain", b"", true)
        }
        Route::BadRequest => respond(&mut conn, "400 Bad Request", "text/plain", b"", true),
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Listen on `addr` and serve the board's metrics (labelled with the VM's name `vm`) from
/// a thread of their own; returns the address bound (for port 0).
pub fn serve(addr: &str, board: Arc<Board>, vm: &str) -> Result<SocketAddr, MetricsError> {
    let bind = |source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let registry = super::registry(board, vm);
    std::thread::Builder::new()
        .name("ft-metrics".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok((conn, _)) => handle(conn, &registry),
                Err(e) => {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tracing::debug!("metrics: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(bind)?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ft::status::StatusReport;

    #[test]
    fn routes_requests() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { body: false }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(
            route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Route::BadRequest
        );
        assert_eq!(route(b""), Route::BadRequest);
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A server that cut a huge request short may reset the connection under us.
        let _ = c.write_all(request);
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_and_survives_slow_huge_and_silent_clients() {
        let board = Arc::new(Board::default());
        board.publish(&StatusReport {
            role: "backup".into(),
            epoch: 2,
            ..Default::default()
        });
        let addr = serve("127.0.0.1:0", board, "vm").unwrap();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("ftvm_epoch{vm=\"vm\"} 2"), "{ok}");
        assert!(get(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        // A client that sends an endless head is cut off at the bound.
        let huge = get(addr, &vec![b'a'; MAX_REQUEST * 4]);
        assert!(
            huge.is_empty() || huge.starts_with("HTTP/1.1 400"),
            "{huge}"
        );
        // A client that says nothing holds the server at most READ_LIMIT.
        let _silent = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        let after = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(after.starts_with("HTTP/1.1 200 OK"));
        assert!(
            t.elapsed() < READ_LIMIT + Duration::from_secs(3),
            "{:?}",
            t.elapsed()
        );
    }
}
