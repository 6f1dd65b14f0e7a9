//! Metrics for operators: what a VMM of a pair reports about itself (the same
//! [`StatusReport`] its status file carries), in the Prometheus/OpenMetrics text format,
//! encoded by the `prometheus-client` crate and served over HTTP (`http`) at
//! `GET /metrics` when the VMM is started with `--metrics ADDR`.
//!
//! The controller publishes a fresh report on the [`Board`] each time it writes its status
//! (five times a second); a scrape encodes the latest one. Nothing here touches the VM, so
//! a scraper can neither stall the guest nor see a half-updated report.

mod http;

pub use http::{serve, MetricsError};

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use ft_log::output::DELAY_BOUNDS_NS;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::status::StatusReport;
use crate::bus::lock;

/// The latest report of this VMM, shared by its controller and the metrics server.
#[derive(Debug, Default)]
pub struct Board {
    latest: Mutex<Option<StatusReport>>,
}

impl Board {
    /// Make `report` the one the next scrape encodes.
    pub fn publish(&self, report: &StatusReport) {
        *lock(&self.latest) = Some(report.clone());
    }

    /// The report published last, if any.
    pub fn latest(&self) -> Option<StatusReport> {
        lock(&self.latest).clone()
    }
}

/// Encodes the board's latest report on each scrape.
#[derive(Debug)]
struct PairCollector(Arc<Board>);

fn gauge<N>(e: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter<N>(e: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result
where
    ConstCounter<N>: EncodeMetric,
{
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for PairCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        // Before the first report (the first fifth of a second) there is nothing to say.
        let Some(r) = self.0.latest() else {
            return Ok(());
        };
        let e = &mut e;
        {
            let mut m = e.encode_descriptor(
                "ftvm_role",
                "The role this VMM plays now (the label; the value is always 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("role", r.role.as_str())];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        gauge(e, "ftvm_epoch", "The epoch this VMM runs in", r.epoch)?;
        gauge(
            e,
            "ftvm_exit_ordinal",
            "Exits this VMM's guest has made",
            r.ordinal,
        )?;
        gauge(
            e,
            "ftvm_acked_exit",
            "Primary: the exit the backup last acknowledged; backup: the last exit it verified",
            r.acked,
        )?;
        gauge(
            e,
            "ftvm_lag_exits",
            "Primary: exits not yet acknowledged",
            r.lag_exits,
        )?;
        gauge(
            e,
            "ftvm_peer_connected",
            "1 while a peer is attached over the logging channel",
            u64::from(r.peer.is_some()),
        )?;
        counter(
            e,
            "ftvm_log_bytes",
            "Log bytes through this side's buffer (sent by a primary, replayed by a backup) since the current peer joined",
            r.log_bytes,
        )?;
        gauge(
            e,
            "ftvm_log_bytes_per_second",
            "Log bandwidth over the last second or so",
            r.log_rate_bytes_per_s,
        )?;
        gauge(
            e,
            "ftvm_log_buffer_bytes",
            "Log bytes buffered on this side",
            r.buffer_fill,
        )?;
        gauge(
            e,
            "ftvm_log_buffer_capacity_bytes",
            "Size of this side's log buffer",
            r.buffer_capacity,
        )?;
        gauge(
            e,
            "ftvm_output_held_bytes",
            "Console bytes held under the output rule",
            r.held_output_bytes,
        )?;
        gauge(
            e,
            "ftvm_output_cap_bytes",
            "Console bytes that may be held before the guest's output waits",
            r.output_cap_bytes,
        )?;
        counter(
            e,
            "ftvm_output_released_bytes",
            "Console bytes released",
            r.released_output_bytes,
        )?;
        gauge(
            e,
            "ftvm_frames_held_bytes",
            "Guest network frame bytes held under the output rule",
            r.frames_held_bytes,
        )?;
        counter(
            e,
            "ftvm_frames_released",
            "Guest network frames released to the TAP",
            r.frames_released,
        )?;
        counter(
            e,
            "ftvm_frames_dropped_over_cap",
            "Guest network frames dropped because the held bytes were at their cap",
            r.frames_dropped_over_cap,
        )?;
        counter(
            e,
            "ftvm_frames_discarded",
            "Held guest network frames discarded (this VMM lost, or went live past them)",
            r.frames_discarded,
        )?;
        counter(
            e,
            "ftvm_frames_held",
            "Guest network frames released after the output rule held them",
            r.frames_held_released,
        )?;
        counter(
            e,
            "ftvm_frames_hold_seconds",
            "Time the released guest network frames were held by the output rule",
            r.frames_hold_sum_s,
        )?;
        gauge(
            e,
            "ftvm_frames_hold_max_seconds",
            "The longest a released guest network frame was held by the output rule",
            r.frames_hold_max_ms / 1e3,
        )?;
        counter(
            e,
            "ftvm_output_wait_seconds",
            "Time the guest's console output waited for room under the cap",
            r.output_wait_s,
        )?;
        encode_delay_histogram(e, &r)?;
        counter(
            e,
            "ftvm_deltas",
            "Checkpoint deltas logged or applied",
            r.deltas,
        )?;
        counter(
            e,
            "ftvm_divergences",
            "Divergences the replay found",
            r.divergences,
        )?;
        gauge(
            e,
            "ftvm_recovering",
            "Backup: 1 while diverged and waiting for a checkpoint",
            u64::from(r.recovering),
        )?;
        counter(
            e,
            "ftvm_failovers",
            "Failovers this VMM went through",
            r.failovers,
        )?;
        counter(
            e,
            "ftvm_state_transfers",
            "State transfers completed (sent by a primary, received by a backup)",
            r.transfers,
        )?;
        gauge(
            e,
            "ftvm_state_transfer_pages",
            "Pages of the last state transfer",
            r.transfer_pages,
        )?;
        gauge(
            e,
            "ftvm_state_transfer_rounds",
            "Pre-copy rounds of the last state transfer (primary)",
            r.transfer_rounds,
        )?;
        gauge(
            e,
            "ftvm_state_transfer_pause_seconds",
            "How long the last state transfer paused the guest (primary)",
            r.transfer_pause_ms / 1e3,
        )?;
        gauge(
            e,
            "ftvm_state_transfer_seconds",
            "How long the last state transfer took",
            r.transfer_took_ms / 1e3,
        )
    }
}

/// The output rule's delays as a histogram (buckets from the output gate).
fn encode_delay_histogram(e: &mut DescriptorEncoder, r: &StatusReport) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "ftvm_output_delay_seconds",
        "How long console output waited for the backup's acknowledgement (0: released at once)",
        None,
        MetricType::Histogram,
    )?;
    let counts = &r.output_delay_buckets;
    let buckets: Vec<(f64, u64)> = DELAY_BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .chain(std::iter::once(f64::INFINITY))
        .enumerate()
        .map(|(i, upper)| (upper, counts.get(i).copied().unwrap_or(0)))
        .collect();
    let count = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        r.output_delay_sum_s,
        count,
        &buckets,
        None,
    )
}

/// A registry holding the pair's collector, every metric labelled with the VM's name.
pub fn registry(board: Arc<Board>, vm: &str) -> Registry {
    let mut registry = Registry::with_labels(std::iter::once((
        Cow::Borrowed("vm"),
        Cow::Owned(vm.to_owned()),
    )));
    registry.register_collector(Box::new(PairCollector(board)));
    registry
}

/// The text exposition of `registry` (OpenMetrics, which Prometheus reads).
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `line_start` (name and labels) in `text`.
    pub(super) fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|rest| rest.trim().parse().ok())
    }

    #[test]
    fn a_report_becomes_metrics_with_the_vm_label() {
        let board = Arc::new(Board::default());
        let reg = registry(board.clone(), "web");
        assert_eq!(
            render(&reg).unwrap().trim(),
            "# EOF",
            "nothing before a report"
        );
        let mut counts = vec![0u64; DELAY_BOUNDS_NS.len() + 1];
        counts[0] = 5;
        counts[3] = 2;
        board.publish(&StatusReport {
            role: "primary".into(),
            epoch: 3,
            ordinal: 1000,
            acked: 990,
            lag_exits: 10,
            log_bytes: 4096,
            failovers: 1,
            output_delay_buckets: counts,
            output_delay_sum_s: 0.002,
            transfer_pages: 77,
            transfer_pause_ms: 2.5,
            frames_released: 40,
            frames_discarded: 2,
            frames_held_released: 38,
            frames_hold_sum_s: 0.076,
            ..Default::default()
        });
        let text = render(&reg).unwrap();
        assert_eq!(
            sample(&text, "ftvm_role{vm=\"web\",role=\"primary\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, "ftvm_epoch{vm=\"web\"}"), Some(3.0));
        assert_eq!(sample(&text, "ftvm_acked_exit{vm=\"web\"}"), Some(990.0));
        assert_eq!(
            sample(&text, "ftvm_log_bytes_total{vm=\"web\"}"),
            Some(4096.0)
        );
        assert_eq!(sample(&text, "ftvm_failovers_total{vm=\"web\"}"), Some(1.0));
        assert_eq!(
            sample(&text, "ftvm_frames_released_total{vm=\"web\"}"),
            Some(40.0)
        );
        assert_eq!(
            sample(&text, "ftvm_frames_discarded_total{vm=\"web\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "ftvm_frames_held_total{vm=\"web\"}"),
            Some(38.0)
        );
        assert_eq!(
            sample(&text, "ftvm_frames_hold_seconds_total{vm=\"web\"}"),
            Some(0.076)
        );
        assert_eq!(
            sample(&text, "ftvm_state_transfer_pages{vm=\"web\"}"),
            Some(77.0)
        );
        assert_eq!(
            sample(&text, "ftvm_state_transfer_pause_seconds{vm=\"web\"}"),
            Some(0.0025)
        );
        assert_eq!(
            sample(&text, "ftvm_output_delay_seconds_count{vm=\"web\"}"),
            Some(7.0)
        );
        assert_eq!(
            sample(
                &text,
                "ftvm_output_delay_seconds_bucket{vm=\"web\",le=\"0.0\"}"
            ),
            Some(5.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "ftvm_output_delay_seconds_bucket{vm=\"web\",le=\"+Inf\"}"
            ),
            Some(7.0)
        );
        assert!(text.contains("# TYPE ftvm_output_delay_seconds histogram"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
