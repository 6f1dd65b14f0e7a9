//! What each VMM of a pair reports about itself: a small JSON file in the shared
//! directory, rewritten a few times a second, which `ftvm status` reads and prints.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Also what `ftvm status --json` prints and what `--metrics` serves (`super::metrics`).
/// Fields missing from a file written by an older ftvm read as their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatusReport {
    /// The VM's name.
    pub vm: String,
    /// The VMM's process id.
    pub pid: u32,
    /// The host the VMM runs on (its hostname).
    pub host: String,
    /// primary, primary (alone), backup, going live, halted, stopped
    pub role: String,
    /// The epoch this VMM runs in.
    pub epoch: u64,
    /// The peer's address while a logging channel is up.
    pub peer: Option<String>,
    /// Exits this VMM's guest has made.
    pub ordinal: u64,
    /// Primary: the backup's last acknowledged exit. Backup: the last exit it verified.
    pub acked: u64,
    /// Primary: exits not yet acknowledged.
    pub lag_exits: u64,
    /// Log bytes buffered on this side of the channel, and the buffer's size.
    pub buffer_fill: u64,
    /// The log buffer's size in bytes.
    pub buffer_capacity: u64,
    /// Log bytes through this side's pipe so far (sent or replayed).
    pub log_bytes: u64,
    /// Console bytes held under the output rule now.
    pub held_output_bytes: u64,
    /// Console bytes released so far.
    pub released_output_bytes: u64,
    /// Mean time a released console chunk was held, in milliseconds.
    pub output_delay_avg_ms: f64,
    /// Longest time a released console chunk was held, in milliseconds.
    pub output_delay_max_ms: f64,
    /// Checkpoint deltas logged (primary) or applied (backup).
    pub deltas: u64,
    /// Backup: divergences its replay found between the log and its own run.
    pub divergences: u64,
    /// Backup: diverged, waiting for the checkpoint that puts it back in step.
    #[serde(default)]
    pub recovering: bool,
    /// The notice of this VMM's last failover, if it went through one.
    pub last_failover: Option<String>,
    /// When the report was made, in milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The guest's disks (this host's copies).
    #[serde(default)]
    pub disks: u32,
    /// Backup: checkpoints at which its disks' running I/O CRCs equalled the primary's,
    /// and at which they did not (a copy out of step).
    #[serde(default)]
    pub disk_checks_matched: u64,
    /// Backup: checkpoints at which some disk's CRC differed from the primary's.
    #[serde(default)]
    pub disk_checks_differed: u64,
    /// Failovers this VMM went through (went on alone, or went live).
    pub failovers: u64,
    /// Log bytes per second over the last second or so.
    pub log_rate_bytes_per_s: f64,
    /// Released output chunks by delay, in the buckets of
    /// `ft_log::output::DELAY_BOUNDS_NS` (and a last unbounded one), and their total.
    pub output_delay_buckets: Vec<u64>,
    /// Sum of the released console chunks' delays, in seconds.
    pub output_delay_sum_s: f64,
    /// Console bytes that may be held before the guest's output waits, and how long it
    /// has waited for room in all.
    pub output_cap_bytes: u64,
    /// Seconds the guest's console output has waited for room, in all.
    pub output_wait_s: f64,
    /// State transfers completed (sent as a primary, received as a backup), and the
    /// figures of the last one (rounds and pause: primary only).
    pub transfers: u64,
    /// Pages the last state transfer carried.
    pub transfer_pages: u64,
    /// Pre-copy rounds of the last state transfer (primary only).
    pub transfer_rounds: u64,
    /// How long the last state transfer paused the guest, in milliseconds (primary only).
    pub transfer_pause_ms: f64,
    /// How long the last state transfer took, in milliseconds.
    pub transfer_took_ms: f64,
    /// The guest's network frames under the output rule (zeros without a NIC): bytes
    /// held now, frames released to the TAP, dropped over the hold cap, and discarded
    /// (this VMM lost, or a backup went live past them).
    pub frames_held_bytes: u64,
    /// Frames released to the TAP.
    pub frames_released: u64,
    /// Frames dropped because holding them would have passed the cap.
    pub frames_dropped_over_cap: u64,
    /// Held frames discarded (this VMM lost, or a backup went live past them).
    pub frames_discarded: u64,
    /// How long the released frames were held by the rule: their count, the sum, the
    /// longest.
    pub frames_held_released: u64,
    /// Sum of the hold times of the `frames_held_released` frames, in seconds.
    pub frames_hold_sum_s: f64,
    /// Longest hold time of one of them, in milliseconds.
    pub frames_hold_max_ms: f64,
}

/// A status report is about a kilobyte; anything much longer is not one.
const MAX_REPORT: u64 = 64 << 10;

/// Writes a VMM's reports without letting a hung shared directory hang the VMM: each write
/// has a deadline, and while one is stuck the next ones are skipped (not piled up on
/// threads of their own).
pub struct StatusWriter {
    path: PathBuf,
    in_flight: Arc<AtomicBool>,
}

/// Why a status report was not written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// An earlier write to this file is still stuck: this one is skipped.
    #[error("an earlier status write to {0} has not finished")]
    Busy(PathBuf),
    /// The write did not finish within its limit (it goes on in the background).
    #[error("the status write to {0} did not finish in time")]
    Timeout(PathBuf),
    /// Writing the file failed.
    #[error("cannot write the status file {path}")]
    Io {
        /// The status file.
        path: PathBuf,
        /// Why writing failed.
        #[source]
        source: std::io::Error,
    },
}

impl StatusWriter {
    /// A writer of the status file at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            in_flight: Arc::default(),
        }
    }

    /// Write `report`, giving up after `limit`; skipped while an earlier write is stuck.
    pub fn write(&self, report: StatusReport, limit: Duration) -> Result<(), StatusError> {
        if self.in_flight.swap(true, Ordering::SeqCst) {
            return Err(StatusError::Busy(self.path.clone()));
        }
        let (path, done) = (self.path.clone(), self.in_flight.clone());
        let written = super::deadline::within(limit, move || {
            let r = report.write(&path);
            done.store(false, Ordering::SeqCst);
            r
        });
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(source)) => Err(StatusError::Io {
                path: self.path.clone(),
                source,
            }),
            None => Err(StatusError::Timeout(self.path.clone())),
        }
    }
}

/// The wall-clock time in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl StatusReport {
    /// Write atomically (temp file and rename) so a reader never sees half a report. The
    /// temporary file is opened without following a link planted in its place.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("status.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?
            .write_all(&text)?;
        std::fs::rename(&tmp, path)
    }

    /// Read a report (at most `MAX_REPORT` bytes, not through a link).
    pub fn read(path: &Path) -> Result<Self, String> {
        let mut text = Vec::new();
        super::shared::open_no_follow(path)
            .and_then(|f| f.take(MAX_REPORT).read_to_end(&mut text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// One human-readable block; `now_ms` to say how fresh it is.
    pub fn render(&self, now_ms: u64) -> String {
        let age = now_ms.saturating_sub(self.updated_unix_ms) as f64 / 1000.0;
        let fresh = if age > 5.0 {
            format!("  (stale: last update {age:.0} s ago, the VMM is probably gone)")
        } else {
            String::new()
        };
        let pct = if self.buffer_capacity > 0 {
            100.0 * self.buffer_fill as f64 / self.buffer_capacity as f64
        } else {
            0.0
        };
        format!(
            "{vm} pid {pid} on {host}: {role}, epoch {epoch}{fresh}\n  \
             peer {peer}; exit {ord}, acked {acked}, lag {lag} exits\n  \
             log {log} bytes, buffer {fill}/{cap} bytes ({pct:.0}%)\n  \
             output held {held} bytes, released {rel} bytes, delay avg {avg:.2} ms max {max:.2} ms\n  \
             deltas {deltas}, divergences {div}{rec}; failovers {fos}, last: {fo}{frames}{disks}",
            vm = self.vm,
            pid = self.pid,
            host = self.host,
            role = self.role,
            epoch = self.epoch,
            peer = self.peer.as_deref().unwrap_or("none"),
            ord = self.ordinal,
            acked = self.acked,
            lag = self.lag_exits,
            log = self.log_bytes,
            fill = self.buffer_fill,
            cap = self.buffer_capacity,
            held = self.held_output_bytes,
            rel = self.released_output_bytes,
            avg = self.output_delay_avg_ms,
            max = self.output_delay_max_ms,
            deltas = self.deltas,
            div = self.divergences,
            rec = if self.recovering { " (recovering now)" } else { "" },
            fos = self.failovers,
            fo = self.last_failover.as_deref().unwrap_or("none"),
            frames = if self.frames_released + self.frames_held_bytes + self.frames_discarded > 0 {
                format!(
                    "\n  frames held {} bytes, released {}, dropped over the cap {}, discarded {}{}",
                    self.frames_held_bytes,
                    self.frames_released,
                    self.frames_dropped_over_cap,
                    self.frames_discarded,
                    match self.frames_held_released {
                        0 => String::new(),
                        n => format!(
                            "; hold avg {:.2} ms, max {:.2} ms",
                            self.frames_hold_sum_s * 1e3 / n as f64,
                            self.frames_hold_max_ms
                        ),
                    }
                )
            } else {
                String::new()
            },
            disks = match (self.disks, self.disk_checks_differed) {
                (0, _) => String::new(),
                (n, 0) => format!(
                    "\n  disks {n}: in step at {} checkpoints",
                    self.disk_checks_matched
                ),
                (n, bad) => format!(
                    "\n  disks {n}: OUT OF STEP at {bad} checkpoints ({} in step)",
                    self.disk_checks_matched
                ),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_links_and_huge_files_are_not_used() {
        let d = std::env::temp_dir().join(format!("ftvm-status-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let target = d.join("target");
        std::fs::write(&target, "precious").unwrap();
        let path = d.join("vm.h-1.status");
        std::os::unix::fs::symlink(&target, path.with_extension("status.tmp")).unwrap();
        let w = StatusWriter::new(path.clone());
        w.write(StatusReport::default(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(StatusReport::read(&path).unwrap(), StatusReport::default());
        let link = d.join("link.status");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(StatusReport::read(&link).is_err());
        let huge = d.join("huge.status");
        std::fs::write(&huge, vec![b' '; 1 << 20]).unwrap();
        assert!(StatusReport::read(&huge).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn round_trips_and_says_when_stale() {
        let path = std::env::temp_dir().join(format!("ftvm-status-{}.status", std::process::id()));
        let r = StatusReport {
            vm: "vm".into(),
            role: "backup".into(),
            epoch: 3,
            updated_unix_ms: 10_000,
            ..Default::default()
        };
        r.write(&path).unwrap();
        assert_eq!(StatusReport::read(&path).unwrap(), r);
        assert!(r.render(11_000).contains("backup, epoch 3"));
        assert!(!r.render(11_000).contains("stale"));
        assert!(r.render(60_000).contains("stale"));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(StatusReport::read(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn says_whether_the_disks_are_in_step() {
        let mut r = StatusReport::default();
        assert!(!r.render(0).contains("disks"), "no disks, no line");
        r.disks = 1;
        r.disk_checks_matched = 7;
        assert!(r.render(0).contains("disks 1: in step at 7 checkpoints"));
        r.disk_checks_differed = 2;
        assert!(r
            .render(0)
            .contains("OUT OF STEP at 2 checkpoints (7 in step)"));
    }

    #[test]
    fn shows_the_frame_gate_when_the_guest_has_a_nic() {
        let mut r = StatusReport::default();
        assert!(!r.render(0).contains("frames"), "no NIC traffic, no line");
        r.frames_released = 12;
        r.frames_held_bytes = 1500;
        r.frames_discarded = 3;
        let text = r.render(0);
        assert!(
            text.contains(
                "frames held 1500 bytes, released 12, dropped over the cap 0, discarded 3"
            ) && !text.contains("hold avg"),
            "{text}"
        );
        r.frames_held_released = 4;
        r.frames_hold_sum_s = 0.010;
        r.frames_hold_max_ms = 4.5;
        let text = r.render(0);
        assert!(
            text.contains("discarded 3; hold avg 2.50 ms, max 4.50 ms"),
            "{text}"
        );
    }
}
