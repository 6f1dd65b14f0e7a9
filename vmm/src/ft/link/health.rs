//! The link's shared health (the failure verdicts' bookkeeping) and its timed writer.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ft_log::liveness::{Liveness, SendProgress};

use super::{nanos, LinkLimits};
use crate::bus::lock;
use crate::ft::secure::SecureStream;

/// What both sides' threads share with their controller.
pub(super) struct Health {
    pub(super) started: Instant,
    pub(super) liveness: Mutex<Liveness>,
    pub(super) sending: Mutex<SendProgress>,
    pub(super) failure: Mutex<Option<String>>,
    pub(super) stop: AtomicBool,
}

impl Health {
    pub(super) fn new(limits: LinkLimits) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            liveness: Mutex::new(Liveness::new(nanos(limits.peer_timeout), 0)),
            sending: Mutex::new(SendProgress::new(nanos(limits.stall_limit))),
            failure: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn heard(&self) {
        let now = self.now();
        lock(&self.liveness).heard(now);
    }

    /// The receiver found nothing from the peer, having looked since `since_ns` (until
    /// now).
    pub(super) fn looked(&self, since_ns: u64) {
        let now = self.now();
        lock(&self.liveness).looked(since_ns, now);
    }

    pub(super) fn fail(&self, why: String) {
        let mut f = lock(&self.failure);
        if f.is_none() && !self.stop.load(Ordering::SeqCst) {
            *f = Some(why);
        }
    }
}

/// The sender threads' side of the connection: every write is timed for the back-pressure
/// verdict.
pub(super) struct Outgoing {
    pub(super) tx: SecureStream,
    pub(super) health: Arc<Health>,
}

impl Write for Outgoing {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let now = self.health.now();
        lock(&self.health.sending).started(now);
        let r = self.tx.write(data);
        lock(&self.health.sending).finished();
        r
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let now = self.health.now();
        lock(&self.health.sending).started(now);
        let r = self.tx.flush();
        lock(&self.health.sending).finished();
        r
    }
}
