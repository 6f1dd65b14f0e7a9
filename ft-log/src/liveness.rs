//! Failure detection's bookkeeping: when did we last hear from the peer.
//!
//! Both sides send heartbeats on the logging channel; any message counts as hearing from
//! the peer. A peer silent for longer than the timeout is presumed dead, and the VMM goes
//! to the test-and-set (DESIGN.md section 3). No clocks here: callers pass `now_ns` from
//! one monotonic clock, which keeps this testable and the VMM's choice of clock its own.

#[derive(Debug, Clone)]
pub struct Liveness {
    timeout_ns: u64,
    last_ns: u64,
}

impl Liveness {
    /// Counting from `now_ns`, as if the peer had just been heard (a connection that was
    /// just made gets a full timeout to say something).
    pub fn new(timeout_ns: u64, now_ns: u64) -> Self {
        Self {
            timeout_ns,
            last_ns: now_ns,
        }
    }

    /// Something arrived from the peer. A time before the last one heard (clocks read on
    /// different threads) never moves the last-heard time back.
    pub fn heard(&mut self, now_ns: u64) {
        self.last_ns = self.last_ns.max(now_ns);
    }

    /// True once the peer has been silent for longer than the timeout.
    pub fn expired(&self, now_ns: u64) -> bool {
        self.silent_for_ns(now_ns) > self.timeout_ns
    }

    /// How long the peer has been silent (0 if `now_ns` is before the last time heard).
    pub fn silent_for_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.last_ns)
    }

    /// How long until [`Liveness::expired`] turns true if nothing arrives (a poll timeout):
    /// 0 once expired, else the time until one nanosecond past the timeout.
    pub fn remaining_ns(&self, now_ns: u64) -> u64 {
        (self.timeout_ns.saturating_add(1)).saturating_sub(self.silent_for_ns(now_ns))
    }

    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    pub fn last_heard_ns(&self) -> u64 {
        self.last_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_only_after_more_than_the_timeout() {
        let mut l = Liveness::new(100, 1000);
        assert!(!l.expired(1000));
        assert!(!l.expired(1100));
        assert!(l.expired(1101));
        assert_eq!(l.silent_for_ns(1101), 101);
        assert_eq!(l.remaining_ns(1000), 101);
        assert_eq!(l.remaining_ns(1100), 1);
        assert_eq!(l.remaining_ns(1101), 0);
        assert_eq!(l.remaining_ns(5000), 0);
        l.heard(1090);
        assert!(!l.expired(1101));
        assert!(l.expired(1191));
        assert_eq!(l.last_heard_ns(), 1090);
        assert_eq!(l.timeout_ns(), 100);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut l = Liveness::new(100, 1000);
        l.heard(500);
        assert_eq!(l.last_heard_ns(), 1000);
        assert_eq!(l.silent_for_ns(10), 0);
        assert!(!l.expired(0));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let l = Liveness::new(u64::MAX, 0);
        assert!(!l.expired(u64::MAX));
        assert_eq!(l.remaining_ns(0), u64::MAX);
        let l = Liveness::new(0, u64::MAX);
        assert!(!l.expired(u64::MAX));
        let l = Liveness::new(0, 0);
        assert!(l.expired(1));
    }
}
