//! The logging channel's network side: one TCP connection, a sender and a receiver thread
//! on each VMM, heartbeats both ways and a failure verdict after a timeout.
//!
//! Primary: its sender drains the log pipe onto the connection (a heartbeat when there is
//! nothing to send); its receiver takes the backup's acknowledgements to the output gate.
//! Backup: its receiver fills the log pipe from the connection (blocking while the pipe is
//! full, which in turn stalls the primary through TCP); its sender acknowledges what the
//! replay has verified and asks for a checkpoint delta when the replay diverged.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ft_log::channel::{encode_message, MessageDecoder, ToBackup, ToPrimary};
use ft_log::liveness::Liveness;

use super::console::ConsoleSink;
use super::pipe::Pipe;
use crate::replay::LiveCounters;

/// Log bytes per `ToBackup::Log` message at most.
const LOG_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the peer closed the logging channel")]
    Closed,
    #[error("the logging channel failed")]
    Io(#[from] std::io::Error),
    #[error("the peer sent a damaged message: {0}")]
    Damaged(#[from] ft_log::channel::ChannelError),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("no word from the peer for {0:?}")]
    Timeout(Duration),
}

/// Read the next message, waiting as the stream's read timeout allows. `Ok(None)`: the
/// timeout passed without a whole message.
pub fn recv<M: serde::de::DeserializeOwned>(
    stream: &mut impl Read,
    dec: &mut MessageDecoder<M>,
) -> Result<Option<M>, LinkError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(m) = dec.next_message()? {
            return Ok(Some(m));
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                dec.finish()?;
                return Err(LinkError::Closed);
            }
            Ok(n) => dec.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// An error with its sources, on one line (for the failure verdict and status).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn send<M: serde::Serialize>(stream: &mut impl Write, m: &M) -> Result<(), LinkError> {
    stream.write_all(&encode_message(m))?;
    Ok(())
}

/// What both sides' threads share with their controller.
struct Health {
    started: Instant,
    liveness: Mutex<Liveness>,
    failure: Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Health {
    fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            liveness: Mutex::new(Liveness::new(
                u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
                0,
            )),
            failure: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn heard(&self) {
        let now = self.now();
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heard(now);
    }

    fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() && !self.stop.load(Ordering::SeqCst) {
            *f = Some(why);
        }
    }
}

/// One side's view of a live logging channel.
pub struct Link {
    stream: TcpStream,
    pub peer: SocketAddr,
    health: Arc<Health>,
    timeout: Duration,
    threads: Vec<JoinHandle<()>>,
    /// Backup: the log pipe is full, so silence from the primary is expected.
    log_pipe: Option<Pipe>,
}

impl Link {
    /// Why the peer counts as failed, if it does: a broken or damaged connection, or no
    /// word from it within the timeout.
    pub fn failure(&self) -> Option<String> {
        if let Some(f) = self
            .health
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(f);
        }
        // A backup whose log pipe is full is behind, and its receiver deliberately stopped
        // reading: the primary's silence is then its own doing.
        if self
            .log_pipe
            .as_ref()
            .is_some_and(|p| p.fill() >= p.capacity())
        {
            self.health.heard();
            return None;
        }
        let now = self.health.now();
        let l = self
            .health
            .liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        l.expired(now)
            .then(|| LinkError::Timeout(self.timeout).to_string())
    }

    /// Drop the connection and tell the threads to stop. They are not waited for: a
    /// backup's receiver may be blocked handing the log to a full pipe, which only the
    /// replay (or the pipe's close or abort) frees.
    pub fn shutdown(mut self) {
        self.health.stop.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.threads.clear();
    }

    /// Primary side, after the state transfer: ship `log` to the backup, release output
    /// on its acks, take a delta when it asks.
    pub fn primary(
        stream: TcpStream,
        decoder: MessageDecoder<ToPrimary>,
        log: Pipe,
        sink: Arc<ConsoleSink>,
        delta_request: Arc<AtomicBool>,
        acked: Arc<AtomicU64>,
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let peer = stream.peer_addr()?;
        let health = Health::new(timeout);
        let beat = timeout / 5;
        let mut tx = stream.try_clone()?;
        let mut rx = stream.try_clone()?;
        rx.set_read_timeout(Some(beat.max(Duration::from_millis(10))))?;
        let h = health.clone();
        let sender = std::thread::Builder::new()
            .name("ft-send".into())
            .spawn(move || {
                let r = (|| -> Result<(), LinkError> {
                    loop {
                        if h.stop.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        let data = log.drain_up_to(LOG_CHUNK, beat);
                        if !data.is_empty() {
                            send(&mut tx, &ToBackup::Log(data))?;
                        } else if log.is_finished() {
                            return Ok(());
                        } else {
                            send(&mut tx, &ToBackup::Heartbeat)?;
                        }
                    }
                })();
                if let Err(e) = r {
                    h.fail(chain(&e));
                }
            })?;
        let h = health.clone();
        let receiver = std::thread::Builder::new()
            .name("ft-recv".into())
            .spawn(move || {
                let mut dec = decoder;
                let r = (|| -> Result<(), LinkError> {
                    while !h.stop.load(Ordering::SeqCst) {
                        let Some(m) = recv(&mut rx, &mut dec)? else {
                            continue;
                        };
                        h.heard();
                        match m {
                            ToPrimary::Ack { ordinal } => {
                                acked.fetch_max(ordinal, Ordering::SeqCst);
                                sink.ack(ordinal);
                            }
                            ToPrimary::Resync => delta_request.store(true, Ordering::SeqCst),
                            ToPrimary::Heartbeat => {}
                            ToPrimary::Hello { .. } => {
                                return Err(LinkError::Protocol("a second hello".into()))
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    h.fail(chain(&e));
                }
            })?;
        health.heard();
        Ok(Self {
            stream,
            peer,
            health,
            timeout,
            threads: vec![sender, receiver],
            log_pipe: None,
        })
    }

    /// Backup side, after the state transfer: fill `log` from the primary, acknowledge
    /// what the replay verified (releasing it to the local console stream too), ask for a
    /// delta while the replay is diverged.
    pub fn backup(
        stream: TcpStream,
        decoder: MessageDecoder<ToBackup>,
        log: Pipe,
        sink: Arc<ConsoleSink>,
        counters: Arc<LiveCounters>,
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let peer = stream.peer_addr()?;
        let health = Health::new(timeout);
        let beat = timeout / 5;
        let mut tx = stream.try_clone()?;
        let mut rx = stream.try_clone()?;
        rx.set_read_timeout(Some(beat.max(Duration::from_millis(10))))?;
        let h = health.clone();
        let mut pipe = log.clone();
        let receiver = std::thread::Builder::new()
            .name("ft-recv".into())
            .spawn(move || {
                let mut dec = decoder;
                let r = (|| -> Result<(), LinkError> {
                    while !h.stop.load(Ordering::SeqCst) {
                        let Some(m) = recv(&mut rx, &mut dec)? else {
                            continue;
                        };
                        h.heard();
                        match m {
                            ToBackup::Log(bytes) => pipe.write_all(&bytes)?,
                            ToBackup::Heartbeat => {}
                            other => {
                                return Err(LinkError::Protocol(format!(
                                    "state transfer message after the transfer ({})",
                                    match other {
                                        ToBackup::Hello { .. } => "hello",
                                        ToBackup::Pages(_) => "pages",
                                        _ => "machine",
                                    }
                                )))
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    h.fail(chain(&e));
                }
            })?;
        let h = health.clone();
        let sender = std::thread::Builder::new()
            .name("ft-send".into())
            .spawn(move || {
                let r = (|| -> Result<(), LinkError> {
                    let mut last_ack = 0;
                    let mut last_sent = Instant::now();
                    let mut asked = false;
                    while !h.stop.load(Ordering::SeqCst) {
                        let v = counters.verified.load(Ordering::SeqCst);
                        if v > last_ack {
                            sink.ack(v);
                            send(&mut tx, &ToPrimary::Ack { ordinal: v })?;
                            last_ack = v;
                            last_sent = Instant::now();
                        }
                        let recovering = counters.recovering.load(Ordering::SeqCst);
                        if recovering && !asked {
                            send(&mut tx, &ToPrimary::Resync)?;
                            last_sent = Instant::now();
                        }
                        asked = recovering;
                        if last_sent.elapsed() >= beat {
                            send(&mut tx, &ToPrimary::Heartbeat)?;
                            last_sent = Instant::now();
                        }
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    h.fail(chain(&e));
                }
            })?;
        health.heard();
        Ok(Self {
            stream,
            peer,
            health,
            timeout,
            threads: vec![sender, receiver],
            log_pipe: Some(log),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_reports_a_closed_and_a_damaged_stream() {
        let mut dec: MessageDecoder<ToPrimary> = MessageDecoder::new();
        let mut bytes = ft_log::channel::encode_channel_header();
        bytes.extend(encode_message(&ToPrimary::Ack { ordinal: 7 }));
        let mut r = std::io::Cursor::new(bytes.clone());
        assert_eq!(
            recv(&mut r, &mut dec).unwrap(),
            Some(ToPrimary::Ack { ordinal: 7 })
        );
        assert!(matches!(recv(&mut r, &mut dec), Err(LinkError::Closed)));
        let mut damaged = bytes;
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let mut dec: MessageDecoder<ToPrimary> = MessageDecoder::new();
        let e = recv(&mut std::io::Cursor::new(damaged), &mut dec).unwrap_err();
        assert!(matches!(e, LinkError::Damaged(_)), "{e}");
    }
}
