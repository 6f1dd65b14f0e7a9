//! One VMM of a fault-tolerant pair: the controller that owns the VM, the logging
//! channel and the shared directory, and moves between roles.
//!
//! - primary, alone: runs the guest, owns the current epoch, releases output at once and
//!   accepts one backup at a time (state transfer, then the live log);
//! - primary, protected: logs to the backup and releases output as it acknowledges;
//! - backup: replays the live log; on losing the primary it claims the next epoch, replays
//!   what it has received, and goes live as a primary alone;
//! - a VMM that loses its peer and then loses the test-and-set (or cannot reach the shared
//!   directory) drops what it holds and halts: it never outputs again.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_log::channel::{encode_channel_header, MessageDecoder, ToBackup, ToPrimary};

use super::console::ConsoleSink;
use super::key::ChannelKey;
use super::link::{recv, Link, LinkError, PrimaryAcks};
use super::pipe::Pipe;
use super::secure::{SecureError, SecureStream};
use super::shared::{Claim, SharedDir, SharedError};
use super::status::{now_unix_ms, StatusReport};
use super::transfer::{self, TransferError};
use crate::machine::{FtHooks, LogSetup, Resources, Vm, VmConfig, VmError};
use crate::platform::ConsoleOut;
use crate::replay::LiveCounters;
use crate::vcpu::{LogMode, VcpuEvent, VcpuReport};

#[derive(Debug, thiserror::Error)]
pub enum FtError {
    #[error(transparent)]
    Shared(#[from] SharedError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot listen for a backup on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the primary at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state transfer from the primary failed")]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the primary runs epoch {claimed}, but the shared directory's owner is of epoch {owned}: refusing to follow a stale or lying primary")]
    EpochMismatch { claimed: u64, owned: u64 },
    #[error("the logging channel with {peer} is not secure")]
    Secure {
        peer: String,
        #[source]
        source: SecureError,
    },
    #[error("the vCPU thread did not do what the controller asked")]
    Vcpu(#[from] crate::vcpu::VcpuError),
}

/// Settings shared by both roles.
pub struct FtOptions {
    pub shared: SharedDir,
    /// Where to accept backups (a backup uses it once it has gone live).
    pub listen: Option<String>,
    /// Silence after which the peer counts as failed.
    pub peer_timeout: Duration,
    /// Size of the log buffer on each side of the channel.
    pub buffer_bytes: usize,
    /// The pair's channel key (see [`super::key`]).
    pub key: ChannelKey,
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

enum Role {
    Primary,
    Backup,
    /// A backup that won the test-and-set, replaying the rest of the log.
    GoingLive {
        since: Instant,
    },
}

struct Node {
    vm: Vm,
    opts: FtOptions,
    sink: Arc<ConsoleSink>,
    counters: Arc<LiveCounters>,
    delta_request: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    epoch: u64,
    role: Role,
    link: Option<Link>,
    pipe: Option<Pipe>,
    listener: Option<TcpListener>,
    last_failover: Option<String>,
    who: String,
    /// The pair's channel key: a joining backup must prove it holds it.
    key: ChannelKey,
    status: super::status::StatusWriter,
    status_at: Instant,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

fn bind(addr: &str) -> Result<TcpListener, FtError> {
    let listen = |source| FtError::Listen {
        addr: addr.to_owned(),
        source,
    };
    let l = TcpListener::bind(addr).map_err(listen)?;
    l.set_nonblocking(true).map_err(listen)?;
    Ok(l)
}

/// How a VM of the pair is wired to its controller, the same for both roles: the hooks it
/// is built with, its console (held back by the output rule), and the controller's ends of
/// what the hooks share.
struct Wiring {
    hooks: FtHooks,
    console: ConsoleOut,
    /// Set by the link when the backup asks for a checkpoint delta.
    delta_request: Arc<AtomicBool>,
    /// The guest's console position, as the platform keeps it.
    position: Arc<AtomicU64>,
}

impl Wiring {
    /// Dirty pages are logged from the start (for a state transfer, or a delta); a backup
    /// takes `live_input` for when it goes live.
    fn new(
        sink: &Arc<ConsoleSink>,
        live_input: Option<crossbeam_channel::Receiver<Vec<u8>>>,
    ) -> Self {
        let exit_ordinal = Arc::new(AtomicU64::new(0));
        let position = Arc::new(AtomicU64::new(0));
        let delta_request = Arc::new(AtomicBool::new(false));
        let hooks = FtHooks {
            dirty_log: true,
            live_input,
            delta_request: Some(delta_request.clone()),
            exit_ordinal: Some(exit_ordinal.clone()),
            console_position: Some(position.clone()),
        };
        Self {
            hooks,
            console: Box::new(sink.writer(exit_ordinal, position.clone())),
            delta_request,
            position,
        }
    }
}

/// Start a VM as the primary of a new pair: claim epoch 1, boot (or restore) the guest
/// and run it, protected whenever a backup has joined.
pub fn run_primary(
    config: Option<&VmConfig>,
    restore: Option<&std::path::Path>,
    opts: FtOptions,
    input: crossbeam_channel::Receiver<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<Outcome, FtError> {
    let listener = opts.listen.as_deref().map(bind).transpose()?;
    let who = format!("primary pid {} on {}", std::process::id(), hostname());
    let epoch = opts.shared.claim_first(&who)?;
    let key = opts.key.clone();
    let sink = ConsoleSink::new(0, Some(opts.shared.open_console()?), true);
    sink.set_alone(true);
    let Wiring {
        hooks,
        console,
        delta_request,
        position,
    } = Wiring::new(&sink, None);
    let pause = Arc::new(AtomicBool::new(false));
    let vm = match (config, restore) {
        (_, Some(dir)) => {
            Vm::restore_with(dir, console, Some(input), None, pause, LogSetup::Off, hooks)?
        }
        (Some(c), None) => Vm::boot_with(c, console, Some(input), pause, LogSetup::Off, hooks)?,
        (None, None) => unreachable!("the command line requires --kernel or --restore"),
    };
    // The stream starts empty even when the guest (restored) has printed before.
    sink.set_base(position.load(Ordering::SeqCst));
    eprintln!(
        "ftvm: primary of '{}' in epoch {epoch}; waiting for a backup on {}",
        opts.shared.name(),
        opts.listen
            .as_deref()
            .unwrap_or("(no --listen: unprotected)")
    );
    let node = Node::new(
        vm,
        opts,
        sink,
        delta_request,
        epoch,
        Role::Primary,
        listener,
        who,
        key,
    );
    node.vm.vcpu.resume();
    node.run(stop)
}

/// Join the primary at `primary` as its backup: receive its state, replay its log, and
/// take over when it fails.
pub fn run_backup(
    primary: &str,
    opts: FtOptions,
    input: crossbeam_channel::Receiver<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<Outcome, FtError> {
    let listener = opts.listen.as_deref().map(bind).transpose()?;
    let connect = |source| FtError::Connect {
        addr: primary.to_owned(),
        source,
    };
    let addr = primary
        .to_socket_addrs()
        .map_err(connect)?
        .next()
        .ok_or_else(|| connect(std::io::Error::other("no address")))?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(connect)?;
    tcp.set_nodelay(true).map_err(connect)?;
    let key = opts.key.clone();
    let mut stream =
        SecureStream::connect(tcp, &key, HANDSHAKE_LIMIT).map_err(|source| FtError::Secure {
            peer: primary.to_owned(),
            source,
        })?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(connect)?;
    let mut hello = encode_channel_header();
    hello.extend(ft_log::channel::encode_message(&ToPrimary::Hello {
        vm_name: opts.shared.name().to_owned(),
    }));
    std::io::Write::write_all(&mut stream, &hello).map_err(connect)?;
    eprintln!(
        "ftvm: backup of '{}': receiving state from {primary}",
        opts.shared.name()
    );
    let t = Instant::now();
    let mut dec = MessageDecoder::<ToBackup>::new();
    // The primary finishes any transfer in progress first; a big guest takes a while.
    let got = transfer::receive_state(
        &mut stream,
        &mut dec,
        opts.shared.name(),
        Duration::from_secs(900),
    )?;
    eprintln!(
        "ftvm: state transfer: {} pages ({} MiB) in {:.2} s; replaying from exit {} in epoch {}",
        got.pages,
        (got.pages * 4096) >> 20,
        t.elapsed().as_secs_f64(),
        got.machine.vm.vcpu.ordinal,
        got.epoch
    );
    // The primary's word on its epoch is checked against the test-and-set's own record.
    let owned = opts.shared.current_owner()?.map_or(0, |(epoch, _)| epoch);
    if owned != got.epoch {
        return Err(FtError::EpochMismatch {
            claimed: got.epoch,
            owned,
        });
    }
    let sink = ConsoleSink::new(
        got.machine.console_offset,
        Some(opts.shared.open_console()?),
        false,
    );
    sink.set_base(got.machine.console_base);
    let Wiring {
        hooks,
        console,
        delta_request,
        position: _,
    } = Wiring::new(&sink, Some(input));
    let counters = Arc::new(LiveCounters::default());
    counters
        .verified
        .store(got.machine.vm.vcpu.ordinal, Ordering::SeqCst);
    let pipe = Pipe::new(opts.buffer_bytes);
    // The channel runs first: building the VM already reads the log's first entry.
    stream.set_read_timeout(None).map_err(connect)?;
    let link = Link::backup(
        stream,
        dec,
        pipe.clone(),
        sink.clone(),
        counters.clone(),
        opts.peer_timeout,
    )?;
    let vm = Vm::from_state(
        got.memory,
        got.machine.vm,
        got.machine.mem_mib,
        got.machine.clock,
        Resources {
            console,
            input_rx: None,
            trace_exits: None,
            pause_request: Arc::new(AtomicBool::new(false)),
        },
        LogSetup::LiveReplay(Box::new(pipe.clone()), counters.clone()),
        hooks,
    )?;
    let who = format!("backup pid {} on {}", std::process::id(), hostname());
    let mut node = Node::new(
        vm,
        opts,
        sink,
        delta_request,
        got.epoch,
        Role::Backup,
        listener,
        who,
        key,
    );
    node.counters = counters;
    node.link = Some(link);
    node.pipe = Some(pipe);
    node.vm.vcpu.resume();
    node.run(stop)
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vm: Vm,
        opts: FtOptions,
        sink: Arc<ConsoleSink>,
        delta_request: Arc<AtomicBool>,
        epoch: u64,
        role: Role,
        listener: Option<TcpListener>,
        who: String,
        key: ChannelKey,
    ) -> Self {
        let status_path =
            opts.shared
                .status_path(&format!("{}-{}", hostname(), std::process::id()));
        Self {
            vm,
            opts,
            sink,
            counters: Arc::default(),
            delta_request,
            acked: Arc::default(),
            epoch,
            role,
            link: None,
            pipe: None,
            listener,
            last_failover: None,
            who,
            key,
            status: super::status::StatusWriter::new(status_path),
            status_at: Instant::now() - Duration::from_secs(1),
        }
    }

    fn run(mut self, stop: &AtomicBool) -> Result<Outcome, FtError> {
        let outcome = self.main_loop(stop);
        let o = self.sink.stats();
        eprintln!(
            "ftvm: output rule: {} bytes released in {} releases, delay avg {:.2} ms, max {:.2} ms; {} bytes dropped unacknowledged",
            o.bytes_released,
            o.releases,
            o.mean_delay_ns() as f64 / 1e6,
            o.max_delay_ns as f64 / 1e6,
            o.bytes_discarded
        );
        self.write_status(match &outcome {
            Ok(Outcome::Halted(..)) => "halted",
            _ => "stopped",
        });
        outcome
    }

    fn main_loop(&mut self, stop: &AtomicBool) -> Result<Outcome, FtError> {
        loop {
            if stop.load(Ordering::SeqCst) {
                tracing::info!("stop requested by signal");
                return Ok(self.finish_guest());
            }
            match self.vm.vcpu.next_event(Duration::from_millis(5)) {
                Some(VcpuEvent::Stopped(_)) => return Ok(self.guest_ended()),
                Some(VcpuEvent::WentLive { ordinal, replay }) => self.went_live(ordinal, &replay),
                _ => {}
            }
            if let Role::Backup | Role::GoingLive { .. } = self.role {
                // A backup releases to the console stream what it has verified itself.
                self.sink.ack(self.counters.verified.load(Ordering::SeqCst));
            }
            if let Some(why) = self.link.as_ref().and_then(Link::failure) {
                if let Some(halted) = self.peer_lost(&why)? {
                    return Ok(halted);
                }
            }
            if matches!(self.role, Role::Primary) && self.link.is_none() {
                self.accept_backup();
            }
            if self.status_at.elapsed() >= Duration::from_millis(200) {
                let role = match (&self.role, &self.link) {
                    (Role::Primary, Some(_)) => "primary",
                    (Role::Primary, None) => "primary (alone)",
                    (Role::Backup, _) => "backup",
                    (Role::GoingLive { .. }, _) => "going live",
                };
                self.write_status(role);
            }
        }
    }

    /// A backup is knocking: transfer the state and start protecting the guest.
    fn accept_backup(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let (stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!("accepting a backup failed: {e}");
                return;
            }
        };
        match self.protect(stream) {
            Ok(()) => {}
            Err(e) => {
                eprintln!(
                    "ftvm: a backup from {from} could not join: {}; running unprotected",
                    super::link::chain(&e)
                );
                if let Some(p) = self.pipe.take() {
                    p.abort();
                }
                self.sink.set_alone(true);
                // If logging had started, stop it (the VM may be paused or running).
                if self.vm.vcpu.pause(Duration::from_secs(10)).is_ok() {
                    let _ = self.vm.vcpu.set_log(LogMode::Off);
                    self.vm.vcpu.resume();
                }
            }
        }
    }

    fn protect(&mut self, tcp: TcpStream) -> Result<(), FtError> {
        tcp.set_nodelay(true).map_err(LinkError::from)?;
        let peer = tcp.peer_addr().map_err(LinkError::from)?;
        // Nothing about the guest goes to a peer that has not proved it holds the key.
        let mut stream =
            SecureStream::accept(tcp, &self.key, HANDSHAKE_LIMIT).map_err(|source| {
                FtError::Secure {
                    peer: peer.to_string(),
                    source,
                }
            })?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(LinkError::from)?;
        let mut dec = MessageDecoder::<ToPrimary>::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let name = loop {
            match recv(&mut stream, &mut dec)? {
                Some(ToPrimary::Hello { vm_name }) => break vm_name,
                Some(_) => return Err(LinkError::Protocol("no hello".into()).into()),
                None if Instant::now() > deadline => {
                    return Err(LinkError::Timeout(Duration::from_secs(10)).into())
                }
                None => {}
            }
        };
        if name != self.opts.shared.name() {
            // Tell it why before hanging up: it will say so and exit.
            return Err(LinkError::Protocol(format!(
                "the backup is for VM '{name}', this is '{}'",
                self.opts.shared.name()
            ))
            .into());
        }
        eprintln!("ftvm: backup joining from {peer}: transferring state");
        let pipe = Pipe::new(self.opts.buffer_bytes);
        self.pipe = Some(pipe.clone());
        self.counters = Arc::new(LiveCounters::default());
        self.delta_request.store(false, Ordering::SeqCst);
        let hello = ToBackup::Hello {
            vm_name: name,
            epoch: self.epoch,
            mem_mib: self.vm.mem_mib,
            console_offset: self.sink.offset(),
        };
        let report = transfer::send_state(
            &self.vm,
            &mut stream,
            hello,
            &pipe,
            self.counters.clone(),
            &self.sink,
        )?;
        self.acked.store(report.ordinal, Ordering::SeqCst);
        stream.set_read_timeout(None).map_err(LinkError::from)?;
        let link = Link::primary(
            stream,
            dec,
            pipe,
            PrimaryAcks {
                sink: self.sink.clone(),
                delta_request: self.delta_request.clone(),
                acked: self.acked.clone(),
                guest_ordinal: self.vm.exit_ordinal.clone(),
            },
            self.opts.peer_timeout,
        )?;
        eprintln!(
            "ftvm: protected: {} pages in {} rounds, paused {:.1} ms, {:.2} s in all; logging from exit {}",
            report.pages_sent,
            report.rounds,
            report.paused_for.as_secs_f64() * 1e3,
            report.took.as_secs_f64(),
            report.ordinal
        );
        self.link = Some(link);
        Ok(())
    }

    /// The peer is gone (or the channel is): claim the next epoch before going on.
    fn peer_lost(&mut self, why: &str) -> Result<Option<Outcome>, FtError> {
        let lost_at = Instant::now();
        if let Some(link) = self.link.take() {
            link.shutdown();
        }
        // At the last epoch the claim of the same number fails, and this VMM halts.
        let next = self.epoch.saturating_add(1);
        let primary = matches!(self.role, Role::Primary);
        if primary {
            // Unstall the guest (its log has nowhere to go); its output stays held.
            if let Some(p) = self.pipe.take() {
                p.abort();
            }
        }
        let claim = self.opts.shared.claim(next, &self.who);
        match claim {
            Ok(Claim::Won(epoch)) => {
                self.epoch = epoch;
                if primary {
                    self.vm.vcpu.pause(Duration::from_secs(10))?;
                    self.vm.vcpu.set_log(LogMode::Off)?;
                    self.vm.vcpu.resume();
                    self.sink.set_alone(true);
                    let note = format!(
                        "epoch {epoch}: backup lost ({why}); went on alone in {:.0} ms",
                        lost_at.elapsed().as_secs_f64() * 1e3
                    );
                    eprintln!("ftvm: {note}");
                    self.last_failover = Some(note);
                } else {
                    // Everything received is replayed before the guest goes live.
                    let pending = self.pipe.as_ref().map_or(0, Pipe::fill);
                    if let Some(p) = self.pipe.take() {
                        p.close();
                    }
                    eprintln!(
                        "ftvm: primary lost ({why}); won epoch {epoch}; replaying the last {pending} bytes of log, then going live"
                    );
                    self.role = Role::GoingLive { since: lost_at };
                }
                Ok(None)
            }
            other => {
                let why_halt = match other {
                    Ok(Claim::Lost { epoch, holder }) => {
                        format!("lost the test-and-set for epoch {epoch} to {holder}")
                    }
                    Err(e) => format!("cannot reach the shared directory ({e})"),
                    Ok(Claim::Won(_)) => unreachable!("handled above"),
                };
                if let Some(p) = self.pipe.take() {
                    p.abort();
                }
                let dropped = self.sink.discard();
                let msg = format!(
                    "peer lost ({why}) and {why_halt}: halting without {dropped} bytes of unacknowledged output"
                );
                let report = self.vm.vcpu.finish();
                Ok(Some(Outcome::Halted(msg, report)))
            }
        }
    }

    fn went_live(&mut self, ordinal: u64, replay: &crate::replay::ReplayStats) {
        let took = match self.role {
            Role::GoingLive { since } => since.elapsed(),
            _ => Duration::ZERO,
        };
        self.sink.set_alone(true);
        self.sink.serve_stdout_from_here();
        self.role = Role::Primary;
        let note = format!(
            "epoch {}: primary lost; live at exit {ordinal} {:.0} ms after the loss was detected ({} exits verified, {} divergences)",
            self.epoch,
            took.as_secs_f64() * 1e3,
            replay.exits_verified,
            replay.divergences
        );
        eprintln!("ftvm: {note}");
        self.last_failover = Some(note);
    }

    /// The guest stopped by itself. A primary makes sure what it printed last leaves
    /// (acknowledged by the backup, or released after winning the test-and-set).
    fn guest_ended(&mut self) -> Outcome {
        if let Some(p) = &self.pipe {
            if matches!(self.role, Role::Primary) {
                p.close();
            }
        }
        let deadline = Instant::now() + self.opts.peer_timeout * 4 + Duration::from_secs(5);
        while self.link.is_some() && self.sink.held_bytes() > 0 && Instant::now() < deadline {
            if let Some(why) = self.link.as_ref().and_then(Link::failure) {
                match self.peer_lost(&why) {
                    Ok(Some(Outcome::Halted(msg, _))) => {
                        eprintln!("ftvm: {msg}");
                        break;
                    }
                    _ => break,
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let (Some(link), Role::Primary) = (&self.link, &self.role) {
            link.wait_sent(deadline.saturating_duration_since(Instant::now()));
        }
        self.finish_guest()
    }

    fn finish_guest(&mut self) -> Outcome {
        if let Some(link) = self.link.take() {
            link.shutdown();
        }
        if let Some(p) = self.pipe.take() {
            if matches!(self.role, Role::Primary) {
                p.close();
            } else {
                p.abort();
            }
        }
        Outcome::Stopped(self.vm.vcpu.finish())
    }

    fn write_status(&mut self, role: &str) {
        self.status_at = Instant::now();
        let stats = self.sink.stats();
        let ordinal = self.vm.exit_ordinal.load(Ordering::SeqCst);
        let backup = !matches!(self.role, Role::Primary);
        let acked = if backup {
            self.counters.verified.load(Ordering::SeqCst)
        } else {
            self.acked.load(Ordering::SeqCst)
        };
        let (written, read) = self.pipe.as_ref().map_or((0, 0), Pipe::totals);
        let report = StatusReport {
            vm: self.opts.shared.name().to_owned(),
            pid: std::process::id(),
            host: hostname(),
            role: role.to_owned(),
            epoch: self.epoch,
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
        };
        if let Err(e) = self.status.write(report, Duration::from_secs(1)) {
            tracing::debug!("{}", super::link::chain(&e));
        }
    }
}
