//! The logging channel's network side: one TCP connection, a sender and a receiver thread
//! on each VMM, heartbeats both ways and a failure verdict after a timeout.
//!
//! Primary: its sender drains the log pipe onto the connection (a heartbeat when there is
//! nothing to send); its receiver takes the backup's acknowledgements to the output gate.
//! Backup: its receiver fills the log pipe from the connection (blocking while the pipe is
//! full, which in turn stalls the primary through TCP); its sender acknowledges what the
//! replay has verified and asks for a checkpoint delta when the replay diverged.
//!
//! Two verdicts make the peer failed besides a broken or damaged connection: silence (no
//! message for the peer timeout, [`ft_log::liveness::Liveness`]) and back-pressure (one
//! write to the peer stuck for the stall limit, [`ft_log::liveness::SendProgress`]). The
//! second catches a peer that keeps sending heartbeats but has stopped reading: the
//! primary's log buffer would fill and its guest stall for as long as that lasted.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ft_log::channel::{MessageDecoder, ToBackup, ToPrimary};
use serde::de::DeserializeOwned;

use health::{Health, Outgoing};
pub use messages::{chain, recv, send};

use super::console::ConsoleSink;
use super::pipe::Pipe;
use super::secure::SecureStream;
use crate::bus::lock;
use crate::counters::LiveCounters;

/// Log bytes per `ToBackup::Log` message at most.
const LOG_CHUNK: usize = 256 * 1024;

/// Why the logging channel failed, as seen by one side.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer closed the connection.
    #[error("the peer closed the logging channel")]
    Closed,
    /// Reading or writing the connection failed.
    #[error("the logging channel failed")]
    Io(#[from] std::io::Error),
    /// The peer's bytes do not decode as a message.
    #[error("the peer sent a damaged message: {0}")]
    Damaged(#[from] ft_log::channel::ChannelError),
    /// The peer sent a message out of turn (the text says which).
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    /// No word from the peer for this long (the peer timeout, or the wait for its hello).
    #[error("no word from the peer for {0:?}")]
    Timeout(Duration),
    /// One write to the peer stayed stuck for this long (the stall limit).
    #[error("the peer has taken nothing from the logging channel for {0:?}: it stopped reading")]
    Stalled(Duration),
}

/// How long the peer may be silent, and how long one write to it may stay stuck, before
/// it counts as failed.
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    /// How long the peer may send nothing before it counts as failed.
    pub peer_timeout: Duration,
    /// How long one write to the peer may stay stuck before it counts as failed.
    pub stall_limit: Duration,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the primary's receiver updates from the backup's messages.
pub struct PrimaryAcks {
    /// The console under the output rule: acks release its output.
    pub sink: Arc<ConsoleSink>,
    /// Set when the backup asks for a checkpoint.
    pub delta_request: Arc<AtomicBool>,
    /// The highest exit the backup acknowledged.
    pub acked: Arc<AtomicU64>,
    /// The guest's exit ordinal: no ack may go beyond what the guest has done.
    pub guest_ordinal: Arc<AtomicU64>,
}

/// One side's view of a live logging channel.
pub struct Link {
    stream: SecureStream,
    /// The peer's address.
    pub peer: SocketAddr,
    health: Arc<Health>,
    limits: LinkLimits,
    threads: Vec<JoinHandle<()>>,
    /// Backup: the log pipe is full, so silence from the primary is expected.
    log_pipe: Option<Pipe>,
    /// Backup: the primary said its log is complete; its silence or close is the end.
    peer_finished: Arc<AtomicBool>,
}

impl Link {
    /// Why the channel to the peer counts as failed, if it does: a broken or damaged
    /// connection, no word from the peer within the timeout, or a write to it stuck for
    /// the stall limit. Whether a peer that said goodbye (see [`Link::peer_finished`]) is
    /// lost at all is the role's to decide, in one place: `Node::link_failure`.
    pub fn failure(&self) -> Option<String> {
        if let Some(f) = lock(&self.health.failure).clone() {
            return Some(f);
        }
        if lock(&self.health.sending).stalled(self.health.now()) {
            return Some(LinkError::Stalled(self.limits.stall_limit).to_string());
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
        // Silence the receiver saw, not merely time passed: on a loaded host this thread
        // may run while the receiver, with the peer's word waiting unread, does not.
        let l = lock(&self.health.liveness);
        l.silence_confirmed()
            .then(|| LinkError::Timeout(self.limits.peer_timeout).to_string())
    }

    /// Backup: the primary said goodbye (its guest stopped; the log it sent is complete).
    pub fn peer_finished(&self) -> bool {
        self.peer_finished.load(Ordering::SeqCst)
    }

    /// Primary, its log closed: wait (at most `limit`) until the sender has put the rest
    /// of the log (its shutdown record) on the connection, so that shutting the link down
    /// does not cut it off.
    pub fn wait_sent(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let sender_done = || self.threads.first().is_none_or(JoinHandle::is_finished);
        while !sender_done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
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
        stream: SecureStream,
        decoder: MessageDecoder<ToPrimary>,
        log: Pipe,
        on_ack: PrimaryAcks,
        limits: LinkLimits,
    ) -> Result<Self, LinkError> {
        let PrimaryAcks {
            sink,
            delta_request,
            acked,
            guest_ordinal,
        } = on_ack;
        let gate = Arc::new(std::sync::Mutex::new(resync::ResyncGate::new(
            resync::MIN_RESYNC_INTERVAL,
        )));
        let deferred = gate.clone();
        let delta_later = delta_request.clone();
        let on_message = move |m: ToPrimary| -> Result<(), LinkError> {
            match m {
                ToPrimary::Ack { ordinal } => {
                    // The exit in progress may already be logged; nothing after it is.
                    let reached = guest_ordinal.load(Ordering::SeqCst).saturating_add(1);
                    if ordinal > reached {
                        return Err(LinkError::Protocol(format!(
                            "the backup acknowledged exit {ordinal}; the guest has made {reached}"
                        )));
                    }
                    acked.fetch_max(ordinal, Ordering::SeqCst);
                    sink.ack(ordinal);
                }
                ToPrimary::Resync => {
                    if lock(&gate).request(Instant::now()) {
                        delta_request.store(true, Ordering::SeqCst);
                    }
                }
                ToPrimary::Heartbeat => {}
                ToPrimary::Hello { .. } => {
                    return Err(LinkError::Protocol("a second hello".into()))
                }
            }
            Ok(())
        };
        let send_step = move |tx: &mut Outgoing, beat: Duration| -> Result<bool, LinkError> {
            if lock(&deferred).poll(Instant::now()) {
                delta_later.store(true, Ordering::SeqCst);
            }
            let data = log.drain_up_to(LOG_CHUNK, beat);
            if !data.is_empty() {
                send(tx, &ToBackup::Log(data))?;
            } else if log.is_finished() {
                // Everything logged is on its way: the close that follows is no failure.
                send(tx, &ToBackup::Goodbye)?;
                return Ok(false);
            } else {
                send(tx, &ToBackup::Heartbeat)?;
            }
            Ok(true)
        };
        Self::start(stream, decoder, limits, None, on_message, send_step)
    }

    /// Backup side, after the state transfer: fill `log` from the primary, acknowledge
    /// what the replay verified (releasing it to the local console stream too), ask for a
    /// delta while the replay is diverged.
    pub fn backup(
        stream: SecureStream,
        decoder: MessageDecoder<ToBackup>,
        log: Pipe,
        sink: Arc<ConsoleSink>,
        counters: Arc<LiveCounters>,
        limits: LinkLimits,
    ) -> Result<Self, LinkError> {
        let mut pipe = log.clone();
        let finished = Arc::new(AtomicBool::new(false));
        let said_goodbye = finished.clone();
        let on_message = move |m: ToBackup| -> Result<(), LinkError> {
            match m {
                ToBackup::Log(bytes) => pipe.write_all(&bytes)?,
                ToBackup::Heartbeat => {}
                ToBackup::Goodbye => said_goodbye.store(true, Ordering::SeqCst),
                other => {
                    return Err(LinkError::Protocol(format!(
                        "state transfer message after the transfer ({})",
                        match other {
                            ToBackup::Hello { .. } => "hello",
                            ToBackup::Pages(_) => "pages",
                            ToBackup::Disks { .. } | ToBackup::DiskChunk { .. } => "disk",
                            _ => "machine",
                        }
                    )))
                }
            }
            Ok(())
        };
        let mut last_ack = 0;
        let mut last_sent = Instant::now();
        let mut asked = false;
        let send_step = move |tx: &mut Outgoing, beat: Duration| -> Result<bool, LinkError> {
            let v = counters.verified.load(Ordering::SeqCst);
            if v > last_ack {
                sink.ack(v);
                send(tx, &ToPrimary::Ack { ordinal: v })?;
                last_ack = v;
                last_sent = Instant::now();
            }
            let recovering = counters.recovering.load(Ordering::SeqCst);
            if recovering && !asked {
                send(tx, &ToPrimary::Resync)?;
                last_sent = Instant::now();
            }
            asked = recovering;
            if last_sent.elapsed() >= beat {
                send(tx, &ToPrimary::Heartbeat)?;
                last_sent = Instant::now();
            }
            std::thread::sleep(Duration::from_micros(500));
            Ok(true)
        };
        let mut link = Self::start(stream, decoder, limits, Some(log), on_message, send_step)?;
        link.peer_finished = finished;
        Ok(link)
    }

    /// The scaffolding both sides share: a receiver thread that hands each message from
    /// the peer to `on_message` (any message counts as word from the peer), and a sender
    /// thread that runs `send_step` (given the heartbeat interval) until it returns
    /// `Ok(false)` or the link stops. A thread's error becomes the link's failure.
    fn start<M, R, S>(
        stream: SecureStream,
        mut decoder: MessageDecoder<M>,
        limits: LinkLimits,
        log_pipe: Option<Pipe>,
        mut on_message: R,
        mut send_step: S,
    ) -> Result<Self, LinkError>
    where
        M: DeserializeOwned + 'static,
        R: FnMut(M) -> Result<(), LinkError> + Send + 'static,
        S: FnMut(&mut Outgoing, Duration) -> Result<bool, LinkError> + Send + 'static,
    {
        let peer = stream.peer_addr()?;
        let health = Health::new(limits);
        // Heartbeats at a fifth of the timeout: four can go missing before the peer fails.
        let beat = limits.peer_timeout / 5;
        let mut tx = Outgoing {
            tx: stream.try_clone()?,
            health: health.clone(),
        };
        let mut rx = stream.try_clone()?;
        // The receiver looks often (a hundredth of the timeout, 2 to 10 ms, well under
        // the twentieth one look counts for): silence is confirmed only by looks adding
        // up to the timeout, so this is how late past it a real loss shows (with 50 ms
        // looks the stock failover test's go-live came 50 ms later).
        let look =
            (limits.peer_timeout / 100).clamp(Duration::from_millis(2), Duration::from_millis(10));
        rx.set_read_timeout(Some(look))?;
        let sender = spawn_worker("ft-send", &health, move |h| {
            while !h.stop.load(Ordering::SeqCst) {
                if !send_step(&mut tx, beat)? {
                    break;
                }
            }
            Ok(())
        })?;
        let receiver = spawn_worker("ft-recv", &health, move |h| {
            while !h.stop.load(Ordering::SeqCst) {
                // A look from this moment until recv gives up finding nothing is silence
                // seen (Liveness counts an overslept look as a short one).
                let looking_from = h.now();
                let Some(m) = recv(&mut rx, &mut decoder)? else {
                    h.looked(looking_from);
                    continue;
                };
                h.heard();
                on_message(m)?;
            }
            Ok(())
        })?;
        health.heard();
        Ok(Self {
            stream,
            peer,
            health,
            limits,
            threads: vec![sender, receiver],
            log_pipe,
            peer_finished: Arc::default(),
        })
    }
}

/// A named thread running `body`; its error, with its sources, is the link's failure.
fn spawn_worker(
    name: &str,
    health: &Arc<Health>,
    body: impl FnOnce(&Health) -> Result<(), LinkError> + Send + 'static,
) -> Result<JoinHandle<()>, LinkError> {
    let h = health.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = body(&h) {
                h.fail(chain(&e));
            }
        })?;
    Ok(handle)
}

mod health;
mod messages;
mod resync;
#[cfg(test)]
mod tests;
