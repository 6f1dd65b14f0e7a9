//! What a VMM of a pair says about itself in its status file (see [`crate::ft::status`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Node;
use crate::ft::link::chain;
use crate::ft::pipe::Pipe;
use crate::ft::role::StatusView;
use crate::ft::status::{now_unix_ms, StatusReport};

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
        };
        if let Err(e) = self.status.write(report, Duration::from_secs(1)) {
            tracing::debug!("{}", chain(&e));
        }
    }
}
