//! Starting a VMM of a pair: the primary claims epoch 1 and boots (or restores) its guest;
//! the backup connects to the primary, receives its state and builds the VM that replays
//! its log. Both then hand the VM to the controller (`Node`).

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_log::channel::{encode_channel_header, MessageDecoder, ToBackup, ToPrimary};

use super::{FtError, FtOptions, Node, Outcome, HANDSHAKE_LIMIT};
use crate::counters::LiveCounters;
use crate::ft::console::ConsoleSink;
use crate::ft::link::Link;
use crate::ft::metrics::{self, Board};
use crate::ft::pipe::Pipe;
use crate::ft::role::RoleCore;
use crate::ft::secure::SecureStream;
use crate::ft::transfer;
use crate::machine::{FtHooks, LogStream, Resources, Vm, VmConfig, VmIo};
use crate::platform::ConsoleOut;

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The board this VMM publishes its reports on, served at `--metrics` if given.
fn metrics_board(opts: &FtOptions) -> Result<Arc<Board>, FtError> {
    let board = Arc::new(Board::default());
    if let Some(addr) = &opts.metrics {
        let at = metrics::serve(addr, board.clone(), opts.shared.name())?;
        eprintln!("ftvm: metrics on http://{at}/metrics");
    }
    Ok(board)
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
        pair_nic: crate::machine::PairNicRole,
    ) -> Self {
        let exit_ordinal = Arc::new(AtomicU64::new(0));
        let position = Arc::new(AtomicU64::new(0));
        let delta_request = Arc::new(AtomicBool::new(false));
        let hooks = FtHooks {
            dirty_log: true,
            live_input,
            delta_request: Some(delta_request.clone()),
            held_output: Some(sink.clone()),
            exit_ordinal: Some(exit_ordinal.clone()),
            console_position: Some(position.clone()),
            pair_nic: Some(pair_nic),
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
    let board = metrics_board(&opts)?;
    let who = format!("primary pid {} on {}", std::process::id(), hostname());
    let epoch = opts.shared.claim_first(&who)?;
    let sink = ConsoleSink::with_limits(
        0,
        Some(opts.shared.open_console()?),
        true,
        opts.output_cap,
        opts.stall_limit,
    );
    sink.set_alone(true);
    let Wiring {
        hooks,
        console,
        delta_request,
        position,
    } = Wiring::new(&sink, None, crate::machine::PairNicRole::Primary);
    let io = VmIo::new(console, Arc::new(AtomicBool::new(false)))
        .input(Some(input))
        .hooks(hooks);
    let vm = match (config, restore) {
        (_, Some(dir)) => Vm::restore(
            dir,
            Resources {
                trace_exits: None,
                // Copies of the snapshot's disks, or (none given) the recorded images.
                disks: opts.disks.clone(),
                // Another TAP for the snapshot's NIC, if it has one.
                net: opts.net.clone(),
            },
            io,
        )?,
        (Some(c), None) => Vm::boot(c, io)?,
        (None, None) => unreachable!("the command line requires --kernel or --restore"),
    };
    if let Some(g) = vm.net.as_ref().and_then(|n| n.gated.clone()) {
        sink.attach_frames(g);
    }
    // The stream starts empty even when the guest (restored) has printed before.
    sink.set_base(position.load(Ordering::SeqCst));
    eprintln!(
        "ftvm: primary of '{}' in epoch {epoch}; waiting for a backup on {}",
        opts.shared.name(),
        opts.listen
            .as_deref()
            .unwrap_or("(no --listen: unprotected)")
    );
    let core = RoleCore::primary(epoch, super::role_config(&opts));
    let mut node = Node::new(vm, opts, sink, delta_request, core, listener, who);
    node.board = board;
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
    // This host's copies of the disks, checked before anything is asked of the primary.
    let disks = crate::disk::open_disks(&opts.disks)?
        .into_iter()
        .map(|d| (d.backend, d.read_only))
        .collect::<Vec<_>>();
    let board = metrics_board(&opts)?;
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
        &disks,
    )?;
    drop(disks);
    let transfer_took = t.elapsed();
    // The primary's word on its epoch is checked against the test-and-set's own record
    // before the line that says the backup replays (tests and operators wait for it).
    let owned = opts.shared.current_owner()?.map_or(0, |(epoch, _)| epoch);
    if owned != got.epoch {
        return Err(FtError::EpochMismatch {
            claimed: got.epoch,
            owned,
        });
    }
    eprintln!(
        "ftvm: state transfer: {} pages ({} MiB), {} MiB of disks in {:.2} s; replaying from exit {} in epoch {}, console from byte {}",
        got.pages,
        (got.pages * 4096) >> 20,
        got.disk_bytes >> 20,
        transfer_took.as_secs_f64(),
        got.machine.vm.vcpu.ordinal,
        got.epoch,
        got.machine.console_offset
    );
    let sink = ConsoleSink::with_limits(
        got.machine.console_offset,
        Some(opts.shared.open_console()?),
        false,
        opts.output_cap,
        opts.stall_limit,
    );
    sink.set_base(got.machine.console_base);
    let Wiring {
        hooks,
        console,
        delta_request,
        position: _,
    } = Wiring::new(&sink, Some(input), crate::machine::PairNicRole::Backup);
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
        opts.link_limits(),
    )?;
    let vm = Vm::from_state(
        got.memory,
        got.machine.vm,
        got.machine.mem_mib,
        got.machine.clock,
        Resources {
            trace_exits: None,
            // The copies the transfer brought up to date.
            disks: opts.disks.clone(),
            // This host's TAP for the guest's NIC (read only once live).
            net: opts.net.clone(),
        },
        VmIo::new(console, Arc::new(AtomicBool::new(false)))
            .log(LogStream::LiveReplay(
                Box::new(pipe.clone()),
                counters.clone(),
            ))
            .hooks(hooks),
    )?;
    if let Some(g) = vm.net.as_ref().and_then(|n| n.gated.clone()) {
        sink.attach_frames(g);
    }
    let who = format!("backup pid {} on {}", std::process::id(), hostname());
    let core = RoleCore::backup(got.epoch, super::role_config(&opts));
    let mut node = Node::new(vm, opts, sink, delta_request, core, listener, who);
    node.counters = counters;
    node.board = board;
    node.transfers = 1;
    node.last_transfer = Some(super::report::TransferFigures {
        pages: got.pages,
        took: transfer_took,
        ..Default::default()
    });
    node.link = Some(link);
    node.pipe = Some(pipe);
    node.vm.vcpu.resume();
    node.run(stop)
}
