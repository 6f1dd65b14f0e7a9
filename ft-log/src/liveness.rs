//! Failure detection's bookkeeping: when did we last hear from the peer.
//!
//! Both sides send heartbeats on the logging channel; any message counts as hearing from
//! the peer. A peer silent for longer than the timeout is presumed dead, and the VMM goes
//! to the test-and-set (DESIGN.md section 3). No clocks here: callers pass `now_ns` from
//! one monotonic clock, which keeps this testable and the VMM's choice of clock its own.
//!
//! A clock says how long it has been since the peer was heard, not whether the peer was
//! silent all that time: a receiver that was itself not scheduled (a loaded host) has word
//! from the peer waiting unread, and a peer starved alongside it had no chance to speak.
//! [`Liveness::silence_confirmed`] therefore counts only silence the receiver saw while it
//! was running: the time it spent looking at the connection and finding nothing, each look
//! counted for at most [`LOOK_SHARE`] of the timeout. A receiver that slept through half a
//! second of a host's overload counts that look as a short one, so a pause of both VMMs is
//! never taken for the peer's death; a peer that is really gone is found once the receiver
//! has looked for a whole timeout.

/// The most one look counts for, as a fraction of the timeout (1/LOOK_SHARE of it): a
/// receiver looks far more often than that, so only a look it overslept is cut short.
pub const LOOK_SHARE: u64 = 20;

/// When the peer was last heard from, how long the receiver has since seen it silent, and
/// how long it may stay silent before it is presumed dead. Times are nanoseconds of the
/// caller's monotonic clock.
#[derive(Debug, Clone)]
pub struct Liveness {
    timeout_ns: u64,
    last_ns: u64,
    /// The time the receiver spent looking for word from the peer, and finding none,
    /// since the peer was last heard (each look capped, see [`LOOK_SHARE`]).
    seen_silent_ns: u64,
}

impl Liveness {
    /// Counting from `now_ns`, as if the peer had just been heard (a connection that was
    /// just made gets a full timeout to say something).
    pub fn new(timeout_ns: u64, now_ns: u64) -> Self {
        Self {
            timeout_ns,
            last_ns: now_ns,
            seen_silent_ns: 0,
        }
    }

    /// The receiver looked for word from the peer from `start_ns` until `end_ns` and found
    /// none. The part of the look after the peer was last heard counts as seen silence, up
    /// to a twentieth of the timeout: a look that lasted longer was overslept (the
    /// receiver was not scheduled), and the peer may have been kept from running as long.
    pub fn looked(&mut self, start_ns: u64, end_ns: u64) {
        let counted = end_ns
            .saturating_sub(start_ns.max(self.last_ns))
            .min(self.look_cap_ns());
        self.seen_silent_ns = self.seen_silent_ns.saturating_add(counted);
    }

    /// True once the receiver has seen the peer silent for longer than the timeout, adding
    /// up its looks since the peer was last heard. A receiver kept from running sees
    /// little, so its host's overload is not taken for the peer's silence.
    pub fn silence_confirmed(&self) -> bool {
        self.seen_silent_ns > self.timeout_ns
    }

    /// How long the receiver has seen the peer silent since it was last heard.
    pub fn seen_silent_ns(&self) -> u64 {
        self.seen_silent_ns
    }

    /// Something arrived from the peer: the seen silence starts again. A time before the
    /// last one heard (clocks read on different threads) never moves the last-heard time
    /// back.
    pub fn heard(&mut self, now_ns: u64) {
        self.last_ns = self.last_ns.max(now_ns);
        self.seen_silent_ns = 0;
    }

    /// The most one look counts for (at least a nanosecond, so a zero timeout still
    /// needs a look).
    fn look_cap_ns(&self) -> u64 {
        (self.timeout_ns / LOOK_SHARE).max(1)
    }

    /// True once `now_ns` is more than the timeout after the peer was last heard (by the
    /// clock alone; see [`Liveness::silence_confirmed`] for the verdict a receiver that
    /// may be starved should act on).
    pub fn expired(&self, now_ns: u64) -> bool {
        self.silent_for_ns(now_ns) > self.timeout_ns
    }

    /// How long the peer has been silent by the clock (0 if `now_ns` is before the last
    /// time heard).
    pub fn silent_for_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.last_ns)
    }

    /// How long until [`Liveness::expired`] turns true if nothing arrives (a poll timeout):
    /// 0 once expired, else the time until one nanosecond past the timeout.
    pub fn remaining_ns(&self, now_ns: u64) -> u64 {
        (self.timeout_ns.saturating_add(1)).saturating_sub(self.silent_for_ns(now_ns))
    }

    /// How long the peer may stay silent, in nanoseconds, before it counts as dead.
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    /// When the peer was last heard from (or the start, if never), in the caller's clock.
    pub fn last_heard_ns(&self) -> u64 {
        self.last_ns
    }
}

/// Back-pressure's bookkeeping: how long the sender has been stuck handing one message to
/// the peer. A peer that keeps sending heartbeats but stops reading looks alive to
/// [`Liveness`], while the sender (and behind it a full log buffer, and the guest) waits;
/// past `limit_ns` of one write without progress the peer counts as failed.
#[derive(Debug, Clone)]
pub struct SendProgress {
    limit_ns: u64,
    /// When the write in progress began (None: the sender is not writing).
    writing_since_ns: Option<u64>,
}

impl SendProgress {
    /// Not writing yet; one write may wait `limit_ns` nanoseconds before the peer counts
    /// as failed.
    pub fn new(limit_ns: u64) -> Self {
        Self {
            limit_ns,
            writing_since_ns: None,
        }
    }

    /// The sender starts handing a message to the peer.
    pub fn started(&mut self, now_ns: u64) {
        self.writing_since_ns.get_or_insert(now_ns);
    }

    /// The peer took it (or the write failed, which is a verdict of its own).
    pub fn finished(&mut self) {
        self.writing_since_ns = None;
    }

    /// How long the write in progress has been waiting (0 when none is).
    pub fn stuck_for_ns(&self, now_ns: u64) -> u64 {
        self.writing_since_ns
            .map_or(0, |since| now_ns.saturating_sub(since))
    }

    /// True once one write has waited longer than the limit.
    pub fn stalled(&self, now_ns: u64) -> bool {
        self.stuck_for_ns(now_ns) > self.limit_ns
    }

    /// How long one write may wait, in nanoseconds, before [`SendProgress::stalled`].
    pub fn limit_ns(&self) -> u64 {
        self.limit_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_stuck_past_the_limit_is_a_stall() {
        let mut p = SendProgress::new(100);
        assert!(!p.stalled(u64::MAX), "no write, no stall");
        p.started(1000);
        assert!(!p.stalled(1100));
        assert!(p.stalled(1101));
        assert_eq!(p.stuck_for_ns(1050), 50);
        // Starting again while writing keeps the first start.
        p.started(1090);
        assert!(p.stalled(1101));
        p.finished();
        assert!(!p.stalled(5000));
        assert_eq!(p.stuck_for_ns(5000), 0);
        // Each write has the whole limit; a clock read before the start is harmless.
        p.started(5000);
        assert!(!p.stalled(5100));
        assert!(!p.stalled(10));
        assert_eq!(p.limit_ns(), 100);
    }

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
    fn silence_counts_only_once_the_receiver_has_seen_it() {
        // Timeout 100: one look counts for at most 5.
        let mut l = Liveness::new(100, 1000);
        // However late the clock, nothing is confirmed until the receiver looks.
        assert!(l.expired(5000));
        assert!(!l.silence_confirmed());
        // Twenty short looks make exactly the timeout, which is not past it; one more is.
        for i in 0..20 {
            l.looked(1000 + i * 5, 1005 + i * 5);
        }
        assert_eq!(l.seen_silent_ns(), 100);
        assert!(!l.silence_confirmed(), "exactly the timeout is not past it");
        l.looked(1100, 1101);
        assert!(l.silence_confirmed());
        // Word from the peer (read late, after a starved receiver woke) undoes it.
        l.heard(5000);
        assert!(!l.silence_confirmed());
        assert_eq!(l.seen_silent_ns(), 0);
        // Only the part of a look after the peer was last heard counts, and a look that
        // ends before it counts nothing.
        l.looked(4990, 5003);
        assert_eq!(l.seen_silent_ns(), 3);
        l.looked(10, 20);
        l.looked(5020, 10);
        assert_eq!(l.seen_silent_ns(), 3);
        let mut l = Liveness::new(u64::MAX, 0);
        l.looked(0, u64::MAX);
        l.looked(0, u64::MAX);
        assert!(!l.silence_confirmed());
        let mut l = Liveness::new(0, 0);
        assert!(!l.silence_confirmed());
        l.looked(0, 1);
        assert!(l.silence_confirmed());
    }

    #[test]
    fn a_receiver_that_overslept_its_looks_does_not_confirm_silence() {
        // A host so loaded that every look of the receiver lasts 80 (its read timeout
        // is far shorter): by the clock the peer is long expired, but each look counts
        // for 5, and the verdict waits until 21 of them have found nothing.
        let mut l = Liveness::new(100, 0);
        for i in 0..20 {
            l.looked(i * 80, (i + 1) * 80);
        }
        assert!(l.expired(1600));
        assert!(!l.silence_confirmed());
        l.looked(1600, 1680);
        assert!(l.silence_confirmed());
        // One look that slept through the whole timeout counts as one.
        let mut l = Liveness::new(100, 0);
        l.looked(0, 1_000_000);
        assert_eq!(l.seen_silent_ns(), 5);
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
