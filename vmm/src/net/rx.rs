//! Received frames: an I/O thread reads the TAP into a bounded queue; the vCPU thread
//! takes frames off it only when it is stopped at a point the log can name.
//!
//! [`RxCore`] is the queue's decision logic (no I/O): what is kept, what is dropped, and
//! when a waiting frame should kick the vCPU. A frame the guest has no buffer for goes
//! back to the front and the queue is *blocked*: it kicks no more until an exit has
//! offered it again (a driver posts buffers with a notify, which is such an exit), so a
//! guest that does not read its NIC costs no kicks, and no checkpoints when recording.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::tap::Tap;
use crate::kicker::KickHandle;

/// Default bounds of the receive queue: a burst of full-size frames a guest is slow to
/// take is dropped (as a NIC's ring overflows) rather than held without limit.
pub const DEFAULT_LIMITS: RxLimits = RxLimits {
    frames: 256,
    bytes: 1 << 20,
};
/// Largest frame read from the TAP (the device's own limit).
const READ_BUF: usize = ftvm_devices::virtio::MAX_FRAME_LEN;
/// How long the I/O thread waits for a frame before looking at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Bounds of a receive queue; a frame that would pass either is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxLimits {
    /// Most frames queued at once.
    pub frames: usize,
    /// Most bytes queued at once, over all frames.
    pub bytes: usize,
}

/// Host-side counters of the receive path (not guest state).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RxCounters {
    /// Frames read from the TAP and queued.
    pub received: u64,
    /// Dropped because the queue was full (in frames or bytes).
    pub dropped_full: u64,
    /// Taken off the queue and offered to the device (delivered, too large or broken).
    pub offered: u64,
}

/// What became of a frame pushed onto the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `wake`: the first deliverable frame, the vCPU should be told.
    Queued {
        /// The queue held no deliverable frame before: the vCPU should be told of this one.
        wake: bool,
    },
    /// Dropped: the queue was full.
    Dropped,
}

/// The receive queue's state and decisions, without I/O or locking (see the module docs).
#[derive(Debug)]
pub struct RxCore {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    limits: RxLimits,
    /// Since when (the kicker's clock) a deliverable frame has waited; None when the
    /// queue is empty or blocked.
    waiting_since: Option<u64>,
    /// The front frame found no receive buffer at its last offer.
    blocked: bool,
    /// What the queue has counted.
    pub counters: RxCounters,
}

impl RxCore {
    /// An empty queue bounded by `limits`.
    pub fn new(limits: RxLimits) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            limits,
            waiting_since: None,
            blocked: false,
            counters: RxCounters::default(),
        }
    }

    /// Queue a frame read at `now_ns` (the kicker's clock), or drop it when it does not fit.
    pub fn push(&mut self, frame: Vec<u8>, now_ns: u64) -> Pushed {
        let fits = self.frames.len() < self.limits.frames
            && self
                .bytes
                .checked_add(frame.len())
                .is_some_and(|b| b <= self.limits.bytes);
        if !fits {
            self.counters.dropped_full += 1;
            return Pushed::Dropped;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        self.counters.received += 1;
        let wake = !self.blocked && self.waiting_since.is_none();
        if wake {
            self.waiting_since = Some(now_ns);
        }
        Pushed::Queued { wake }
    }

    /// The next frame to offer the device.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        if self.frames.is_empty() {
            self.waiting_since = None;
        }
        Some(frame)
    }

    /// The device took the frame `take` gave (delivered it, or dropped it as it may).
    pub fn offered(&mut self) {
        self.counters.offered += 1;
        self.blocked = false;
    }

    /// The device had no buffer for the frame `take` gave: it goes back to the front and
    /// the queue stops kicking until the next offer.
    pub fn no_buffer(&mut self, frame: Vec<u8>) {
        self.bytes += frame.len();
        self.frames.push_front(frame);
        self.blocked = true;
        self.waiting_since = None;
    }

    /// No frame is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// When the vCPU should be kicked for a waiting frame, if one waits.
    pub fn kick_at(&self, bound_ns: u64) -> Option<u64> {
        self.waiting_since.map(|t| t.saturating_add(bound_ns))
    }
}

/// The queue the I/O thread fills and the vCPU empties, with the means to wake the vCPU.
pub struct RxQueue {
    core: Mutex<RxCore>,
    doorbell_tx: Sender<()>,
    doorbell_rx: Receiver<()>,
    /// The vCPU's kicker and event bound, set when the vCPU starts (none: never kick).
    kick: OnceLock<(KickHandle, u64)>,
}

impl RxQueue {
    /// An empty queue bounded by `limits`, with no kicker yet.
    pub fn new(limits: RxLimits) -> Arc<Self> {
        let (doorbell_tx, doorbell_rx) = crossbeam_channel::bounded(1);
        Arc::new(Self {
            core: Mutex::new(RxCore::new(limits)),
            doorbell_tx,
            doorbell_rx,
            kick: OnceLock::new(),
        })
    }

    /// The queue's state, locked (the vCPU takes and offers frames through it).
    pub fn core(&self) -> std::sync::MutexGuard<'_, RxCore> {
        crate::bus::lock(&self.core)
    }

    /// Rings when a deliverable frame arrives (a halted vCPU waits on it).
    pub fn doorbell(&self) -> &Receiver<()> {
        &self.doorbell_rx
    }

    /// Frames that wait too long kick the vCPU through `kick` after `bound_ns`.
    pub fn set_kicker(&self, kick: KickHandle, bound_ns: u64) {
        let _ = self.kick.set((kick, bound_ns));
    }

    /// A copy of the queue's counters.
    pub fn counters(&self) -> RxCounters {
        self.core().counters.clone()
    }

    fn push(&self, frame: Vec<u8>) {
        let now = self.kick.get().map_or(0, |(k, _)| k.now_ns());
        let pushed = self.core().push(frame, now);
        match pushed {
            Pushed::Queued { wake: true } => {
                let _ = self.doorbell_tx.try_send(());
                if let Some((kick, bound)) = self.kick.get() {
                    kick.arm_by(now.saturating_add(*bound));
                }
            }
            Pushed::Queued { wake: false } => {}
            Pushed::Dropped => tracing::debug!("receive queue full: frame dropped"),
        }
    }
}

/// The I/O thread reading a TAP into an [`RxQueue`]; stopped and joined on drop.
pub struct RxThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RxThread {
    /// Start a thread (`net-rx`) that reads `tap` into `queue` until this is dropped.
    pub fn spawn(tap: Tap, queue: Arc<RxQueue>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("net-rx".into())
            .spawn(move || read_loop(&tap, &queue, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn read_loop(tap: &Tap, queue: &RxQueue, stop: &AtomicBool) {
    let mut buf = vec![0u8; READ_BUF];
    while !stop.load(Ordering::SeqCst) {
        match tap.wait_readable(POLL) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::error!(
                    tap = tap.name(),
                    "cannot wait on the TAP; receiving stops: {e}"
                );
                return;
            }
        }
        loop {
            match tap.read_frame(&mut buf) {
                Ok(0) => break,
                Ok(n) => queue.push(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(
                        tap = tap.name(),
                        "cannot read the TAP; receiving stops: {e}"
                    );
                    return;
                }
            }
        }
    }
}

impl Drop for RxThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(frames: usize, bytes: usize) -> RxCore {
        RxCore::new(RxLimits { frames, bytes })
    }

    #[test]
    fn the_queue_is_bounded_in_frames_and_bytes() {
        let mut q = core(2, 100);
        assert_eq!(q.push(vec![0; 60], 1), Pushed::Queued { wake: true });
        assert_eq!(q.push(vec![0; 50], 2), Pushed::Dropped, "over the bytes");
        assert_eq!(q.push(vec![0; 40], 3), Pushed::Queued { wake: false });
        assert_eq!(q.push(vec![0; 1], 4), Pushed::Dropped, "over the frames");
        assert_eq!(q.counters.received, 2);
        assert_eq!(q.counters.dropped_full, 2);
        assert_eq!(q.take().unwrap().len(), 60);
        assert_eq!(q.push(vec![0; 60], 5), Pushed::Queued { wake: false });
        assert_eq!(q.take().unwrap().len(), 40);
        assert_eq!(q.take().unwrap().len(), 60);
        assert!(q.take().is_none() && q.is_empty());
        assert_eq!(q.kick_at(10), None);
    }

    #[test]
    fn a_waiting_frame_kicks_after_the_bound() {
        let mut q = core(8, 1000);
        q.push(vec![1], 100);
        q.push(vec![2], 150);
        assert_eq!(q.kick_at(10), Some(110), "from the oldest frame");
        let f = q.take().unwrap();
        q.offered();
        assert_eq!(f, vec![1]);
        assert_eq!(q.kick_at(10), Some(110), "the next one waited as long");
        q.take();
        q.offered();
        assert_eq!(q.kick_at(10), None);
        assert_eq!(q.push(vec![3], 200), Pushed::Queued { wake: true });
        assert_eq!(q.kick_at(10), Some(210));
    }

    #[test]
    fn a_frame_without_a_buffer_waits_at_the_front_without_kicking() {
        let mut q = core(8, 1000);
        q.push(vec![1], 0);
        q.push(vec![2], 0);
        let f = q.take().unwrap();
        q.no_buffer(f);
        assert_eq!(q.kick_at(10), None, "blocked: no kicks");
        assert_eq!(
            q.push(vec![3], 5),
            Pushed::Queued { wake: false },
            "blocked: no wake-up either"
        );
        // The next exit offers it again and the guest has posted a buffer.
        assert_eq!(q.take().unwrap(), vec![1], "order kept");
        q.offered();
        assert_eq!(q.take().unwrap(), vec![2]);
        q.offered();
        assert_eq!(q.take().unwrap(), vec![3]);
        q.offered();
        assert_eq!(q.counters.offered, 3);
        assert_eq!(q.push(vec![4], 9), Pushed::Queued { wake: true });
    }
}
