//! Virtual time: the only time the guest ever sees, through the PIT and the CMOS.
//!
//! Guest time stands still while the VM is paused, so a snapshot taken now and restored
//! later continues where it left off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ftvm_devices::Clock;
use serde::{Deserialize, Serialize};

/// How guest time advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockMode {
    /// Host monotonic time while the vCPU is not paused (the normal, live mode).
    Host,
    /// Each synchronous exit advances time by this many nanoseconds and a halted vCPU
    /// jumps straight to the next timer deadline. The run is then a pure function of the
    /// guest and its inputs: used to test determinism without a log.
    Exits {
        /// Nanoseconds of guest time each synchronous exit adds.
        ns_per_exit: u64,
    },
}

impl std::str::FromStr for ClockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "host" {
            return Ok(Self::Host);
        }
        let ns = s
            .strip_prefix("exits:")
            .ok_or_else(|| format!("unknown clock '{s}' (expected 'host' or 'exits:NS')"))?;
        let ns_per_exit = ns
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("bad nanoseconds per exit '{ns}' in clock '{s}'"))?;
        Ok(Self::Exits { ns_per_exit })
    }
}

/// The VM's clock. One type for both modes keeps the vCPU loop free of dynamic dispatch
/// decisions about time.
pub struct VmClock {
    mode: ClockMode,
    /// Exits mode: current time. Host mode: time accumulated before the last resume.
    base_ns: AtomicU64,
    /// Host mode: when the vCPU was last resumed (None while paused).
    running_since: Mutex<Option<Instant>>,
    /// While set (not NOT_FROZEN), what devices see: a recording VMM freezes guest time at
    /// each exit so that every device read during it sees the one value it logs, and a
    /// replaying VMM sets it from the log.
    frozen_ns: AtomicU64,
}

const NOT_FROZEN: u64 = u64::MAX;

impl VmClock {
    /// A clock in `mode` at `start_ns` nanoseconds of guest time, paused and not frozen.
    pub fn new(mode: ClockMode, start_ns: u64) -> Self {
        Self {
            mode,
            base_ns: AtomicU64::new(start_ns),
            running_since: Mutex::new(None),
            frozen_ns: AtomicU64::new(NOT_FROZEN),
        }
    }

    /// Devices see `ns` until the next freeze (recording and replaying VMMs).
    pub fn freeze(&self, ns: u64) {
        self.frozen_ns
            .store(ns.min(NOT_FROZEN - 1), Ordering::SeqCst);
    }

    /// Devices see time flow again (a VMM that stops recording: nobody freezes it any
    /// more at each exit).
    pub fn unfreeze(&self) {
        self.frozen_ns.store(NOT_FROZEN, Ordering::SeqCst);
    }

    /// Freeze at the current live time and return it.
    pub fn freeze_now(&self) -> u64 {
        let now = self.live_ns();
        self.freeze(now);
        now
    }

    /// How this clock advances.
    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    /// Time starts to flow (host mode).
    pub fn resume(&self) {
        let mut since = crate::bus::lock(&self.running_since);
        if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// Time stops (host mode): fold the running stretch into the base.
    pub fn pause(&self) {
        let mut since = crate::bus::lock(&self.running_since);
        if let Some(t) = since.take() {
            let ran = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.base_ns.fetch_add(ran, Ordering::SeqCst);
        }
    }

    /// A synchronous exit happened (exits mode advances time).
    pub fn on_exit(&self) {
        if let ClockMode::Exits { ns_per_exit } = self.mode {
            self.base_ns.fetch_add(ns_per_exit, Ordering::SeqCst);
        }
    }

    /// Move time forward to at least `ns` (a replayer following a log, so that a later
    /// live phase continues from the logged time).
    pub fn advance_to(&self, ns: u64) {
        self.base_ns.fetch_max(ns, Ordering::SeqCst);
    }

    /// A replaying backup goes live: time flows again from where the log left it (the
    /// replay's own wall time, and the failover, do not show in the guest).
    pub fn go_live(&self) {
        let at = self.now_ns();
        let mut since = crate::bus::lock(&self.running_since);
        self.base_ns.store(at, Ordering::SeqCst);
        self.frozen_ns.store(NOT_FROZEN, Ordering::SeqCst);
        *since = Some(Instant::now());
    }

    /// The vCPU halts until `deadline_ns`. Returns how long the host should wait for it;
    /// in exits mode time jumps there at once and the host does not wait.
    pub fn halt_until(&self, deadline_ns: u64) -> std::time::Duration {
        match self.mode {
            ClockMode::Exits { .. } => {
                self.base_ns.fetch_max(deadline_ns, Ordering::SeqCst);
                std::time::Duration::ZERO
            }
            ClockMode::Host => {
                std::time::Duration::from_nanos(deadline_ns.saturating_sub(self.live_ns()))
            }
        }
    }
}

impl Clock for VmClock {
    fn now_ns(&self) -> u64 {
        match self.frozen_ns.load(Ordering::SeqCst) {
            NOT_FROZEN => self.live_ns(),
            frozen => frozen,
        }
    }
}

impl VmClock {
    /// Time as it flows, ignoring any freeze (for the kicker and for freezing).
    pub fn live_ns(&self) -> u64 {
        let base = self.base_ns.load(Ordering::SeqCst);
        match self.mode {
            ClockMode::Exits { .. } => base,
            ClockMode::Host => {
                let since = crate::bus::lock(&self.running_since);
                let ran = since.map_or(0, |t| t.elapsed().as_nanos());
                base.saturating_add(u64::try_from(ran).unwrap_or(u64::MAX))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("host".parse::<ClockMode>(), Ok(ClockMode::Host));
        assert_eq!(
            "exits:1000".parse::<ClockMode>(),
            Ok(ClockMode::Exits { ns_per_exit: 1000 })
        );
        assert!("exits:0".parse::<ClockMode>().is_err());
        assert!("exits:x".parse::<ClockMode>().is_err());
        assert!("wall".parse::<ClockMode>().is_err());
    }

    #[test]
    fn exits_clock_is_a_function_of_exits_and_halts() {
        let c = VmClock::new(ClockMode::Exits { ns_per_exit: 10 }, 5);
        c.on_exit();
        c.on_exit();
        assert_eq!(c.now_ns(), 25);
        assert_eq!(c.halt_until(1000), std::time::Duration::ZERO);
        assert_eq!(c.now_ns(), 1000);
        assert_eq!(c.halt_until(10), std::time::Duration::ZERO); // never backwards
        assert_eq!(c.now_ns(), 1000);
    }

    #[test]
    fn frozen_clock_shows_the_frozen_time() {
        let c = VmClock::new(ClockMode::Exits { ns_per_exit: 10 }, 0);
        c.on_exit();
        c.freeze(5);
        c.on_exit();
        assert_eq!(c.now_ns(), 5);
        assert_eq!(c.live_ns(), 20);
        assert_eq!(c.freeze_now(), 20);
        assert_eq!(c.now_ns(), 20);
    }

    #[test]
    fn going_live_continues_from_the_replayed_time() {
        let c = VmClock::new(ClockMode::Host, 0);
        c.resume();
        c.freeze(5_000);
        c.advance_to(5_000);
        std::thread::sleep(std::time::Duration::from_millis(3));
        c.go_live();
        let t = c.now_ns();
        // Not the 3 ms the replay took on the host.
        assert!((5_000..5_000 + 2_000_000).contains(&t), "{t}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(c.now_ns() >= t + 2_000_000);
    }

    #[test]
    fn host_clock_stands_still_while_paused() {
        let c = VmClock::new(ClockMode::Host, 100);
        assert_eq!(c.now_ns(), 100);
        c.resume();
        std::thread::sleep(std::time::Duration::from_millis(2));
        c.pause();
        let t = c.now_ns();
        assert!(t >= 100 + 2_000_000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(c.now_ns(), t);
    }
}
