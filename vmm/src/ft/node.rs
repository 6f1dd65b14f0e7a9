//! One VMM of a fault-tolerant pair: the controller that owns the VM, the logging channel
//! and the shared directory. What role it plays, and what to do when something happens, is
//! decided by the role core ([`super::role`]); this module turns the vCPU's events, the
//! link's verdict, a knocking backup and the test-and-set's answers into the core's events,
//! and carries out its actions.
//!
//! - `start`: the primary's and the backup's way in;
//! - `actions`: the role core's actions carried out (sockets, files, the VM);
//! - `join`: a primary taking a backup (handshake, state transfer, live log);
//! - `report`: the status file.

mod actions;
mod doorman;
mod join;
mod report;
mod start;

pub use start::{run_backup, run_primary};

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::console::ConsoleSink;
use super::key::ChannelKey;
use super::link::{Link, LinkError, LinkLimits};
use super::pipe::Pipe;
use super::role::{Event, PairRole, RoleConfig, RoleCore};
use super::secure::SecureError;
use super::shared::{SharedDir, SharedError};
use super::transfer::TransferError;
use crate::counters::LiveCounters;
use crate::machine::{Vm, VmError};
use crate::vcpu::{VcpuEvent, VcpuReport};

/// Why a VMM of a pair could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum FtError {
    /// The shared directory could not be used (bad name, already owned, no answer, I/O).
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// The VM could not be built, restored or run.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A disk image could not be opened or used.
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    /// The address for backups (`--listen`) could not be listened on.
    #[error("cannot listen for a backup on {addr}")]
    Listen {
        /// The address as given.
        addr: String,
        /// Why listening failed.
        #[source]
        source: std::io::Error,
    },
    /// A backup could not connect to the primary.
    #[error("cannot reach the primary at {addr}")]
    Connect {
        /// The primary's address.
        addr: String,
        /// Why connecting failed.
        #[source]
        source: std::io::Error,
    },
    /// The state transfer from the primary to this backup failed.
    #[error("state transfer from the primary failed")]
    Transfer(#[from] TransferError),
    /// The logging channel with the peer failed (closed, broken, damaged or silent).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The primary's epoch is not the one the shared directory's owner record holds.
    #[error("the primary runs epoch {claimed}, but the shared directory's owner is of epoch {owned}: refusing to follow a stale or lying primary")]
    EpochMismatch {
        /// The epoch the primary says it runs.
        claimed: u64,
        /// The epoch of the shared directory's owner.
        owned: u64,
    },
    /// The metrics server could not start.
    #[error(transparent)]
    Metrics(#[from] super::metrics::MetricsError),
    /// The channel's authenticated handshake with the peer failed.
    #[error("the logging channel with {peer} is not secure")]
    Secure {
        /// The peer's address.
        peer: String,
        /// What went wrong in the handshake.
        #[source]
        source: SecureError,
    },
}

/// Settings shared by both roles.
pub struct FtOptions {
    /// The shared directory both VMMs of the pair use (owner files, console stream, status).
    pub shared: SharedDir,
    /// Where to accept backups (a backup uses it once it has gone live).
    pub listen: Option<String>,
    /// Silence after which the peer counts as failed.
    pub peer_timeout: Duration,
    /// Size of the log buffer on each side of the channel.
    pub buffer_bytes: usize,
    /// The pair's channel key (see [`super::key`]).
    pub key: ChannelKey,
    /// This host's copies of the guest's disk images, in device order (a primary
    /// restoring a snapshot: copies of the snapshot's; a backup: copies of the
    /// primary's, which the state transfer brings up to date).
    pub disks: Vec<crate::disk::DiskSpec>,
    /// How long back-pressure may stall the guest (one write to the peer stuck, or the
    /// console waiting for room under the held-output cap) before the peer counts as
    /// failed.
    pub stall_limit: Duration,
    /// Console bytes a primary may hold under the output rule before the guest's output
    /// waits.
    pub output_cap: u64,
    /// Where to serve Prometheus metrics (HOST:PORT), if anywhere.
    pub metrics: Option<String>,
    /// This host's TAP for the guest's NIC (a primary booting: the NIC's own spec).
    pub net: Option<crate::net::NetSpec>,
    /// How pages go to a backup (state transfer, checkpoints).
    pub page_encoding: ft_log::pages::PageEncoding,
}

impl FtOptions {
    pub(crate) fn link_limits(&self) -> LinkLimits {
        LinkLimits {
            peer_timeout: self.peer_timeout,
            stall_limit: self.stall_limit,
        }
    }
}

/// How long a peer may take over the channel's handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// How a VMM of a pair ended.
pub enum Outcome {
    /// The guest stopped (or the VMM was told to stop); the vCPU report.
    Stopped(VcpuReport),
    /// This VMM lost its peer and then the test-and-set (or the shared directory): it
    /// halted without emitting anything more.
    Halted(String, VcpuReport),
}

/// How long the controller waits for the vCPU's next event in one round of its loop.
const POLL: Duration = Duration::from_millis(5);

/// The core's settings from the pair's options: a stopped guest's last output waits for
/// acknowledgement at most four peer timeouts and five seconds (time for a slow backup to
/// catch up, or for its failure to be detected); status a few times a second.
fn role_config(opts: &FtOptions) -> RoleConfig {
    let drain = opts.peer_timeout * 4 + Duration::from_secs(5);
    RoleConfig {
        drain_limit_ns: u64::try_from(drain.as_nanos()).unwrap_or(u64::MAX),
        status_every_ns: 200_000_000,
    }
}

struct Node {
    vm: Vm,
    opts: FtOptions,
    sink: Arc<ConsoleSink>,
    counters: Arc<LiveCounters>,
    delta_request: Arc<AtomicBool>,
    /// The highest exit the backup acknowledged (updated by the link).
    acked: Arc<AtomicU64>,
    /// The acknowledgement last told to the core.
    acked_told: u64,
    core: RoleCore,
    link: Option<Link>,
    pipe: Option<Pipe>,
    /// Where backups knock (their handshakes run on its threads).
    listener: Option<doorman::Doorman>,
    last_failover: Option<String>,
    who: String,
    status: super::status::StatusWriter,
    /// The clock the core's times are read from.
    started: Instant,
    /// Output bytes discarded when this VMM lost (for the halt message).
    dropped: u64,
    outcome: Option<Outcome>,
    /// Where status reports are published for `--metrics`.
    board: Arc<super::metrics::Board>,
    failovers: u64,
    /// State transfers completed, and the last one's figures.
    transfers: u64,
    last_transfer: Option<report::TransferFigures>,
    log_rate: report::RateMeter,
}

impl Node {
    fn new(
        vm: Vm,
        opts: FtOptions,
        sink: Arc<ConsoleSink>,
        delta_request: Arc<AtomicBool>,
        core: RoleCore,
        listener: Option<TcpListener>,
        who: String,
    ) -> Self {
        let key = opts.key.clone();
        let status_path =
            opts.shared
                .status_path(&format!("{}-{}", start::hostname(), std::process::id()));
        Self {
            vm,
            opts,
            sink,
            counters: Arc::default(),
            delta_request,
            acked: Arc::default(),
            acked_told: 0,
            core,
            link: None,
            pipe: None,
            listener: listener.map(|l| doorman::Doorman::spawn(l, key)),
            last_failover: None,
            who,
            status: super::status::StatusWriter::new(status_path),
            started: Instant::now(),
            dropped: 0,
            outcome: None,
            board: Arc::default(),
            failovers: 0,
            transfers: 0,
            last_transfer: None,
            log_rate: report::RateMeter::default(),
        }
    }

    /// Why the peer counts as lost, if it does. A primary that said goodbye (its guest
    /// stopped) is not lost, whatever its channel does next (this is the one place that
    /// weighs the goodbye, so that a backup does not claim a new epoch): the replay runs
    /// to the end of its complete log, with no claim, unless this backup is recovering
    /// from a divergence and needed the primary's checkpoint, which will not come now.
    fn link_failure(&self, link: &Link) -> Option<String> {
        if link.peer_finished() {
            return self
                .counters
                .recovering
                .load(Ordering::SeqCst)
                .then(|| "the primary's guest stopped while this backup was recovering".into());
        }
        link.failure()
    }

    /// A backup's guest runs live from exit `ordinal`: its NIC announces where the guest
    /// is now, sends the frames of its own run, and starts receiving from this host's TAP.
    fn nic_goes_live(&self, ordinal: u64) {
        let Some(net) = &self.vm.net else { return };
        if let Some(gated) = &net.gated {
            gated.go_live(ordinal);
        }
        if let Err(e) = net.start_receiving() {
            eprintln!(
                "ftvm: the live guest gets no network input: {}",
                crate::ft::link::chain(&e)
            );
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn run(mut self, stop: &AtomicBool) -> Result<Outcome, FtError> {
        while !self.core.is_finished() {
            self.round(stop);
        }
        let o = self.sink.stats();
        eprintln!(
            "ftvm: output rule: {} bytes released in {} releases, delay avg {:.2} ms, max {:.2} ms; {} bytes dropped unacknowledged",
            o.bytes_released,
            o.releases,
            o.mean_delay_ns() as f64 / 1e6,
            o.max_delay_ns as f64 / 1e6,
            o.bytes_discarded
        );
        let f = self.sink.frame_counts();
        if f.released + f.discarded > 0 {
            eprintln!(
                "ftvm: output rule for frames: {} released ({} after a hold: avg {:.2} ms, max {:.2} ms), {} discarded, {} dropped over the cap",
                f.released,
                f.held_released,
                f.mean_hold_ns() as f64 / 1e6,
                f.hold_max_ns as f64 / 1e6,
                f.discarded,
                f.dropped_over_cap
            );
        }
        // The core finishes only through FinishGuest or Halt, which set the outcome.
        Ok(self
            .outcome
            .take()
            .unwrap_or_else(|| Outcome::Stopped(self.vm.vcpu.finish())))
    }

    /// One round of the controller's loop: everything that may have happened since the
    /// last, as events for the core.
    fn round(&mut self, stop: &AtomicBool) {
        if stop.load(Ordering::SeqCst) {
            tracing::info!("stop requested by signal");
            return self.handle(Event::StopRequested);
        }
        if matches!(self.core.role(), PairRole::Draining { .. }) {
            // The vCPU has stopped (its event channel may be closed): just let time pass.
            std::thread::sleep(POLL);
        } else {
            match self.vm.vcpu.next_event(POLL) {
                Some(VcpuEvent::Stopped(_)) => {
                    let (held_bytes, now_ns) = (self.sink.held_bytes(), self.now_ns());
                    return self.handle(Event::GuestStopped { held_bytes, now_ns });
                }
                Some(VcpuEvent::WentLive { ordinal, replay }) => {
                    self.nic_goes_live(ordinal);
                    self.handle(Event::WentLive {
                        ordinal,
                        exits_verified: replay.exits_verified,
                        divergences: replay.divergences,
                        now_ns: self.now_ns(),
                    })
                }
                _ => {}
            }
        }
        if self.core.is_replaying() {
            self.handle(Event::Verified {
                ordinal: self.counters.verified.load(Ordering::SeqCst),
                held_bytes: self.sink.held_bytes(),
                now_ns: self.now_ns(),
            });
        }
        if self.core.awaits_acks() {
            let ordinal = self.acked.load(Ordering::SeqCst);
            let draining = matches!(self.core.role(), PairRole::Draining { .. });
            if ordinal != self.acked_told || draining {
                self.acked_told = ordinal;
                self.handle(Event::AckReceived {
                    ordinal,
                    held_bytes: self.sink.held_bytes(),
                    now_ns: self.now_ns(),
                });
            }
        }
        if self.sink.take_stall() && self.link.is_some() && !self.core.is_replaying() {
            let why = format!(
                "held output at its cap ({} bytes) and no acknowledgement for {:?}: the backup is too far behind",
                self.sink.cap(),
                self.opts.stall_limit
            );
            let now_ns = self.now_ns();
            self.handle(Event::PeerLost { why, now_ns });
        }
        if let Some(why) = self.link.as_ref().and_then(|l| self.link_failure(l)) {
            let now_ns = self.now_ns();
            self.handle(Event::PeerLost { why, now_ns });
        }
        let wanted = self.core.accepts_backup() && self.link.is_none();
        if let Some(event) = self.accept_backup(wanted) {
            self.handle(event);
        }
        let now_ns = self.now_ns();
        self.handle(Event::Tick { now_ns });
    }
}
