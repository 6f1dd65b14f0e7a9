//! How often a backup may make its primary take a full checkpoint. A diverged backup asks
//! once (`Resync`) and waits for the checkpoint; a peer that holds the key but asks at
//! every exit would otherwise make the primary checkpoint its whole memory at every exit.
//! Requests closer together than the interval are not dropped (the backup does not ask
//! twice and would stay diverged) but deferred to the end of the interval, merged.

use std::time::{Duration, Instant};

/// Full checkpoints a backup can ask for: at most one per this interval.
pub const MIN_RESYNC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct ResyncGate {
    min_interval: Duration,
    last: Option<Instant>,
    deferred: bool,
}

impl ResyncGate {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last: None,
            deferred: false,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_interval)
    }

    /// The backup asked at `now`: whether to take the checkpoint now (else it is deferred).
    pub fn request(&mut self, now: Instant) -> bool {
        if self.due(now) {
            self.last = Some(now);
            self.deferred = false;
            true
        } else {
            self.deferred = true;
            false
        }
    }

    /// Whether a deferred request has become due at `now` (and is taken by this answer).
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.deferred && self.due(now) {
            self.deferred = false;
            self.last = Some(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_honoured_at_most_once_per_interval_and_never_lost() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut g = ResyncGate::new(ms(1000));
        assert!(g.request(t0), "the first request at once");
        assert!(!g.poll(t0 + ms(10)), "nothing deferred");
        // A flood within the interval: one deferred checkpoint, not one per request.
        for i in 1..100 {
            assert!(!g.request(t0 + ms(i)));
        }
        assert!(!g.poll(t0 + ms(999)), "not before the interval");
        assert!(g.poll(t0 + ms(1000)), "the deferred request, once");
        assert!(!g.poll(t0 + ms(3000)), "taken");
        assert!(g.request(t0 + ms(2000)), "a later request at once");
    }
}
