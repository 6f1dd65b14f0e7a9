//! What a VMM of a pair says about itself in its status file (see [`crate::ft::status`])
//! and to `--metrics` scrapers (see [`crate::ft::metrics`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Node;
use crate::ft::link::chain;
use crate::ft::pipe::Pipe;
use crate::ft::role::StatusView;
use crate::ft::status::{now_unix_ms, StatusReport};

/// What a state transfer took.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransferFigures {
    pub pages: u64,
    /// Pre-copy rounds and the final pause (known on the primary only).
    pub rounds: u64,
    pub paused: Duration,
    pub took: Duration,
}

/// A byte rate over windows of at least a second.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    /// When the window began, and the total then.
    since: Option<(Instant, u64)>,
    per_s: f64,
}

const RATE_WINDOW: Duration = Duration::from_secs(1);

impl RateMeter {
    /// The rate, given the running `total` at `now` (a total that went down - a new
    /// peer's fresh buffer - starts a new window).
    pub fn update(&mut self, total: u64, now: Instant) -> f64 {
        match self.since {
            Some((t, old)) if total >= old => {
                let dt = now.saturating_duration_since(t);
                if dt >= RATE_WINDOW {
                    self.per_s = (total - old) as f64 / dt.as_secs_f64();
                    self.since = Some((now, total));
                }
            }
            _ => {
                self.since = Some((now, total));
                self.per_s = 0.0;
            }
        }
        self.per_s
    }
}

impl Node {
    /// Rewrite the status file (a slow shared directory skips a write, never stalls).
    pub(super) fn write_status(&mut self, view: StatusView) {
        let stats = self.sink.stats();
        let ordinal = self.vm.exit_ordinal.load(Ordering::SeqCst);
        let backup = view.replica;
        let acked = if backup {
            self.counters.verified.load(Ordering::SeqCst)
        } else {
            self.acked.load(Ordering::SeqCst)
        };
        let (written, read) = self.pipe.as_ref().map_or((0, 0), Pipe::totals);
        let (matched, differed) = self
            .vm
            .disk_backends
            .iter()
            .map(crate::disk::FileBackend::crc_checks)
            .fold((0, 0), |(m, d), (m1, d1)| (m + m1, d + d1));
        let frames = self.sink.frame_counts();
        let report = StatusReport {
            vm: self.opts.shared.name().to_owned(),
            pid: std::process::id(),
            host: super::start::hostname(),
            role: view.label.to_owned(),
            epoch: self.core.epoch(),
            peer: self.link.as_ref().map(|l| l.peer.to_string()),
            ordinal,
            acked,
            lag_exits: if self.link.is_some() && !backup {
                ordinal.saturating_sub(acked)
            } else {
                0
            },
            buffer_fill: self.pipe.as_ref().map_or(0, |p| p.fill() as u64),
            buffer_capacity: self.pipe.as_ref().map_or(0, |p| p.capacity() as u64),
            log_bytes: if backup { read } else { written },
            held_output_bytes: self.sink.held_bytes(),
            released_output_bytes: stats.bytes_released,
            output_delay_avg_ms: stats.mean_delay_ns() as f64 / 1e6,
            output_delay_max_ms: stats.max_delay_ns as f64 / 1e6,
            deltas: self.counters.deltas.load(Ordering::Relaxed),
            divergences: self.counters.divergences.load(Ordering::Relaxed),
            recovering: backup && self.counters.recovering.load(Ordering::SeqCst),
            last_failover: self.last_failover.clone(),
            updated_unix_ms: now_unix_ms(),
            disks: self.vm.disk_backends.len() as u32,
            disk_checks_matched: matched,
            disk_checks_differed: differed,
            failovers: self.failovers,
            log_rate_bytes_per_s: self
                .log_rate
                .update(if backup { read } else { written }, Instant::now()),
            output_delay_buckets: stats.delay_counts.to_vec(),
            output_delay_sum_s: stats.total_delay_ns as f64 / 1e9,
            output_cap_bytes: self.sink.cap(),
            output_wait_s: self.sink.waited().as_secs_f64(),
            transfers: self.transfers,
            transfer_pages: self.last_transfer.as_ref().map_or(0, |t| t.pages),
            transfer_rounds: self.last_transfer.as_ref().map_or(0, |t| t.rounds),
            transfer_pause_ms: self
                .last_transfer
                .as_ref()
                .map_or(0.0, |t| t.paused.as_secs_f64() * 1e3),
            transfer_took_ms: self
                .last_transfer
                .as_ref()
                .map_or(0.0, |t| t.took.as_secs_f64() * 1e3),
            frames_held_bytes: frames.held_bytes,
            frames_released: frames.released,
            frames_dropped_over_cap: frames.dropped_over_cap,
            frames_discarded: frames.discarded,
            frames_held_released: frames.held_released,
            frames_hold_sum_s: frames.hold_total_ns as f64 / 1e9,
            frames_hold_max_ms: frames.hold_max_ns as f64 / 1e6,
        };
        self.board.publish(&report);
        if let Err(e) = self.status.write(report, Duration::from_secs(1)) {
            tracing::debug!("{}", chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_whole_windows() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.update(100, t0), 0.0);
        // Within the window: the last rate stands.
        assert_eq!(m.update(600, t0 + Duration::from_millis(500)), 0.0);
        assert_eq!(m.update(2100, t0 + Duration::from_secs(2)), 1000.0);
        assert_eq!(m.update(2200, t0 + Duration::from_millis(2500)), 1000.0);
        // A new peer's buffer counts from 0 again.
        assert_eq!(m.update(10, t0 + Duration::from_secs(3)), 0.0);
        assert_eq!(m.update(510, t0 + Duration::from_secs(4)), 500.0);
    }
}
