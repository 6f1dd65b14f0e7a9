//! Bounded event delay.
//!
//! Interrupts normally reach the guest only at synchronous exits. A guest that runs long
//! without one (a user-mode loop, a kernel spinning with IF=1) would see its timer ticks
//! and its console's transmit interrupts wait indefinitely. The kicker is a small thread
//! that, when an event has waited longer than a bound, signals the vCPU thread out of
//! KVM_RUN so the event can be delivered at that (host-chosen, so unrecorded) point. In a
//! recording VMM the same point is where a checkpoint delta is taken (DESIGN.md section 2).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::VmClock;

/// Default bound on how long an event may wait for a synchronous exit.
pub const DEFAULT_EVENT_BOUND_NS: u64 = 5_000_000;
/// How long a replaying guest may run without the exit its log has next before that is
/// called a divergence (a diverged guest spinning forever would otherwise hang the replay).
pub const REPLAY_STALL_NS: u64 = 10_000_000_000;
/// How long after a kick the kicker kicks again if the vCPU has not disarmed it since. A
/// signal that arrives while the vCPU thread is between KVM_RUNs (handling an exit, or
/// just about to enter) is lost; a guest spinning with IF=1 and no exits would then wait
/// forever for its tick. A kick that landed is not repeated: the vCPU disarms the kicker
/// as soon as KVM_RUN returns, microseconds after the signal. One event bound: the retry
/// is there for liveness; on the stock boot every kicked tick costs (its handler runs
/// emulated), and boots that delivered more ticks took longer.
pub const KICK_RETRY_NS: u64 = DEFAULT_EVENT_BOUND_NS;
const DISARMED: u64 = u64::MAX;

/// Why the vCPU's kicker interrupts KVM_RUN. One timer thread and one signal serve two
/// purposes, set by the vCPU's mode: a live guest's late events, and a replaying guest's
/// stall watch (a replayer delivers nothing late). A backup switches from the second to
/// the first when it goes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickPurpose {
    /// Live: an event that waited `bound_ns` of guest time for a synchronous exit is
    /// delivered at a kick.
    EventBound {
        /// Longest wait, in nanoseconds.
        bound_ns: u64,
    },
    /// Replaying: a guest that runs `limit_ns` without making the exit its log has next
    /// has diverged (it might never make it).
    StallWatch {
        /// Longest run without the expected exit, in nanoseconds.
        limit_ns: u64,
    },
}

impl KickPurpose {
    /// The event bound now, or the one the guest will have once live (the receive queue
    /// of a NIC only takes frames from a live guest's TAP).
    pub fn event_bound_once_live(self) -> u64 {
        match self {
            Self::EventBound { bound_ns } => bound_ns,
            Self::StallWatch { .. } => DEFAULT_EVENT_BOUND_NS,
        }
    }
}

struct Shared {
    /// Virtual time at which to kick the vCPU (DISARMED: never).
    kick_at_ns: AtomicU64,
    /// pthread_t of the vCPU thread (0 until it registers).
    target: AtomicU64,
    stop: AtomicBool,
    /// Signals sent, retries included.
    kicks_sent: AtomicU64,
}

/// The kicker thread and its controls, owned by the vCPU thread's side: armed with a
/// deadline before each run, disarmed at each exit.
pub struct Kicker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    clock: Arc<VmClock>,
}

/// Lets another thread (the network receive thread) ask for a kick: the earliest asked
/// time wins, until the vCPU's next exit disarms the kicker.
#[derive(Clone)]
pub struct KickHandle {
    shared: Arc<Shared>,
    thread: std::thread::Thread,
    clock: Arc<VmClock>,
}

impl KickHandle {
    /// The kicker's clock now (live virtual ns).
    pub fn now_ns(&self) -> u64 {
        self.clock.live_ns()
    }

    /// Kick the vCPU at `at_ns` at the latest (if it is still running then).
    pub fn arm_by(&self, at_ns: u64) {
        arm_shared(&self.shared, &self.thread, at_ns);
    }
}

/// Lower the kick time to `at_ns` (never raise it: the vCPU disarms at every exit, so
/// whoever asks between two exits gets the earliest of the times asked for).
fn arm_shared(shared: &Shared, thread: &std::thread::Thread, at_ns: u64) {
    let old = shared.kick_at_ns.fetch_min(at_ns, Ordering::SeqCst);
    if at_ns < old {
        thread.unpark();
    }
}

impl Kicker {
    /// Start the kicker thread; it kicks by sending `signal` to the registered vCPU thread
    /// when virtual time on `clock` reaches the armed deadline.
    pub fn spawn(clock: Arc<VmClock>, signal: i32) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            kick_at_ns: AtomicU64::new(DISARMED),
            target: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            kicks_sent: AtomicU64::new(0),
        });
        let s = shared.clone();
        let c = clock.clone();
        let thread = std::thread::Builder::new()
            .name("kicker".into())
            .spawn(move || Self::run(&s, &c, signal))?;
        Ok(Self {
            shared,
            thread: Some(thread),
            clock,
        })
    }

    fn run(s: &Shared, clock: &VmClock, signal: i32) {
        while !s.stop.load(Ordering::SeqCst) {
            let at = s.kick_at_ns.load(Ordering::SeqCst);
            if at == DISARMED {
                std::thread::park_timeout(Duration::from_millis(100));
                continue;
            }
            let now = clock.live_ns();
            if now < at {
                std::thread::park_timeout(Duration::from_nanos(at - now));
                continue;
            }
            let target = s.target.load(Ordering::SeqCst);
            // Only kick if the vCPU is still in the same run (it disarms on every exit);
            // stay armed for a retry in case this signal is lost.
            let retry_at = now.saturating_add(KICK_RETRY_NS);
            if target != 0
                && s.kick_at_ns
                    .compare_exchange(at, retry_at, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                s.kicks_sent.fetch_add(1, Ordering::Relaxed);
                // SAFETY: `target` is the pthread_t the vCPU thread registered for itself;
                // the vCPU thread outlives the kicker (the kicker is dropped first), and
                // the signal has a handler that does nothing.
                unsafe { libc::pthread_kill(target as libc::pthread_t, signal) };
            }
        }
    }

    /// Called on the vCPU thread itself, once, before its first run.
    pub fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.shared.target.store(me as u64, Ordering::SeqCst);
    }

    /// Kick the vCPU if it is still running at virtual time `at_ns` (or earlier, if a
    /// [`KickHandle`] asked for an earlier time since the last `disarm`).
    pub fn arm(&self, at_ns: u64) {
        if let Some(t) = &self.thread {
            arm_shared(&self.shared, t.thread(), at_ns);
        }
    }

    /// A handle for other threads to ask for kicks.
    pub fn handle(&self) -> Option<KickHandle> {
        Some(KickHandle {
            shared: self.shared.clone(),
            thread: self.thread.as_ref()?.thread().clone(),
            clock: self.clock.clone(),
        })
    }

    /// Whether a kick (or, after one fired, its retry) is armed.
    pub fn is_armed(&self) -> bool {
        self.shared.kick_at_ns.load(Ordering::SeqCst) != DISARMED
    }

    /// Signals sent so far, retries included.
    pub fn kicks_sent(&self) -> u64 {
        self.shared.kicks_sent.load(Ordering::Relaxed)
    }

    /// Cancel any pending kick (the vCPU exited on its own).
    pub fn disarm(&self) {
        self.shared.kick_at_ns.store(DISARMED, Ordering::SeqCst);
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ClockMode;
    use std::sync::atomic::AtomicUsize;

    static SIGNALS: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        SIGNALS.fetch_add(1, Ordering::SeqCst);
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// A kick whose signal is lost (here: every one, the thread is never in KVM_RUN) is
    /// sent again until the vCPU disarms the kicker, and not after that.
    #[test]
    fn a_kick_is_sent_again_until_disarmed() {
        let signal = vmm_sys_util::signal::SIGRTMIN() + 1;
        vmm_sys_util::signal::register_signal_handler(signal, count).expect("handler");
        let clock = Arc::new(VmClock::new(ClockMode::Host, 0));
        clock.resume();
        let kicker = Kicker::spawn(clock.clone(), signal).expect("kicker");
        kicker.register_current_thread();
        kicker.arm(clock.live_ns());
        assert!(
            wait_for(|| kicker.kicks_sent() >= 3),
            "kicks: {}",
            kicker.kicks_sent()
        );
        assert!(kicker.is_armed(), "a retry stays armed");
        kicker.disarm();
        // A kick already being sent when disarmed may still arrive; then nothing more.
        std::thread::sleep(Duration::from_millis(5));
        let sent = kicker.kicks_sent();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(kicker.kicks_sent(), sent, "no kick after disarm");
        assert!(
            wait_for(|| SIGNALS.load(Ordering::SeqCst) >= 3),
            "signals arrive"
        );
    }
}
