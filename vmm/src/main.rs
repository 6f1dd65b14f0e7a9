//! The `ftvm` command line.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ftvm::clock::ClockMode;
use ftvm::console::WatchedConsole;
use ftvm::machine::{LogStream, Vm, VmConfig};
use ftvm::vcpu::VcpuEvent;

#[derive(Parser)]
#[command(
    name = "ftvm",
    version,
    about = "A fault-tolerant virtual machine monitor on KVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest on one vCPU with its serial console on stdin/stdout.
    Run(RunArgs),
    /// Run a guest like `run` and write everything non-deterministic it sees to a log.
    Record(LogArgs),
    /// Run a second VM from the same start (same kernel flags or --restore) fed only by a
    /// log: checks every exit against it and compares the final state.
    Replay(LogArgs),
    /// Run a guest as the primary of a fault-tolerant pair: it runs at once, and is
    /// protected as soon as a backup joins (`ftvm backup --primary` this --listen address).
    Primary(PrimaryArgs),
    /// Join a primary as its backup: receive its state, replay its log, and take over
    /// (go live) when it fails.
    Backup(BackupArgs),
    /// Show the role, epoch, log lag, held output and failovers of a pair's VMMs.
    Status(StatusArgs),
    /// Print the guest's console stream (every byte once, whichever VMM wrote it).
    Console(ConsoleArgs),
    /// Make a new random channel key for a pair: to FILE (created with mode 0600), or to
    /// standard output (made private if it is a file). Give it to both VMMs with
    /// `--key-file`.
    Keygen(KeygenArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Where to write the key; must not exist. Default: standard output.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct NamedVm {
    /// Directory both VMMs of the pair can reach (NFS or local): test-and-set, console
    /// stream, status files.
    #[arg(long, value_name = "DIR")]
    shared_dir: PathBuf,
    /// Name of the VM (its files in the shared directory start with it).
    #[arg(long, default_value = "vm")]
    name: String,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    vm: NamedVm,
    /// Print one JSON object (the owner of the current epoch and every VMM's report)
    /// instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ConsoleArgs {
    #[command(flatten)]
    vm: NamedVm,
    /// Keep printing as the stream grows (until interrupted).
    #[arg(long)]
    follow: bool,
}

#[derive(clap::Args)]
struct PairArgs {
    #[command(flatten)]
    vm: NamedVm,
    /// Milliseconds of silence after which the peer counts as failed.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(20..=600_000))]
    peer_timeout: u64,
    /// Size of the log buffer on each side of the channel, in KiB (the primary's guest
    /// stalls when it is full).
    #[arg(long, default_value_t = 16384, value_name = "KIB", value_parser = clap::value_parser!(u64).range(64..=4_194_304))]
    buffer: u64,
    /// The pair's channel key (64 hex digits, mode 0600; `ftvm keygen` makes one). Both
    /// VMMs must hold the same: it authenticates them to each other and encrypts the
    /// logging channel.
    #[arg(long, visible_alias = "key", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Run the pair without a secret: the channel uses a publicly known key, so anyone
    /// who reaches it can join as the backup and read the guest's memory. For trying
    /// ftvm out on a closed network only.
    #[arg(long, conflicts_with = "key_file")]
    insecure: bool,
    /// Milliseconds back-pressure may stall the guest before the peer counts as failed:
    /// one write to the peer that does not complete (it stopped reading), or console
    /// output waiting for room under --output-cap.
    #[arg(long, default_value_t = 5000, value_name = "MS", value_parser = clap::value_parser!(u64).range(20..=600_000))]
    stall_limit: u64,
    /// Console output a primary may hold under the output rule, in KiB; past it the
    /// guest's output waits for the backup's acknowledgements (at most --stall-limit).
    #[arg(long, default_value_t = 16384, value_name = "KIB", value_parser = clap::value_parser!(u64).range(1..=4_194_304))]
    output_cap: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// How pages go to the backup (state transfer and checkpoints): `xor-lz4`, `xor-zstd`
    /// or `raw` (see `record --page-encoding`).
    #[arg(long, value_name = "ENCODING", default_value = "xor-lz4", value_parser = parse_page_encoding)]
    page_encoding: ft_log::pages::PageEncoding,
}

fn parse_page_encoding(name: &str) -> Result<ft_log::pages::PageEncoding, String> {
    ft_log::pages::PageEncoding::from_name(name)
        .ok_or_else(|| format!("'{name}' is not one of raw, xor-lz4, xor-zstd"))
}

#[derive(clap::Args)]
struct PrimaryArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// Address to accept a backup on (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct BackupArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// The primary's --listen address.
    #[arg(long, value_name = "ADDR")]
    primary: String,
    /// Address to accept a new backup on once this one has gone live (re-protection).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// This host's copy of each of the guest's disks, in the primary's order: an image of
    /// the same size (its contents are brought up to date by the state transfer, and it
    /// is written by the replay from then on; a read-only disk's copy must already be
    /// equal).
    #[arg(long, value_name = "PATH[,readonly]")]
    disk: Vec<ftvm::disk::DiskSpec>,
    /// This host's TAP for the guest's network card (which the primary's guest has): it
    /// must exist from the start, and is neither read nor written until this backup
    /// goes live. `mac=` is checked against the guest's.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Option<ftvm::net::NetSpec>,
}

#[derive(clap::Args)]
struct LogArgs {
    /// The log file (written by `record`, read by `replay`).
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// How `record` writes checkpoint pages: `xor-lz4` (the difference from the last
    /// version logged, lz4), `xor-zstd`, or `raw` (whole pages, the old format). A replay
    /// reads any.
    #[arg(long, value_name = "ENCODING", default_value = "xor-lz4", value_parser = parse_page_encoding)]
    page_encoding: ft_log::pages::PageEncoding,
    #[command(flatten)]
    run: RunArgs,
}

/// What a single VMM (`run`, `record`, `replay`) does with a log file: none, write one,
/// or follow one. (A pair member's role is `ftvm::ft::role::PairRole`.)
enum LogFile {
    Off,
    Record(PathBuf, ft_log::pages::PageEncoding),
    Replay(PathBuf),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel to boot: an ELF vmlinux (entered in 64-bit mode) or a bzImage.
    #[arg(long, required_unless_present = "restore")]
    kernel: Option<PathBuf>,
    /// Continue the VM saved in this snapshot directory instead of booting a kernel.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "cmdline", "no_default_cmdline", "mem", "clock"])]
    restore: Option<PathBuf>,
    /// Save a snapshot to --snapshot-dir as soon as the guest prints TEXT on its console.
    #[arg(long, value_name = "TEXT", requires = "snapshot_dir")]
    snapshot_on: Option<String>,
    /// Directory (must not exist) for the --snapshot-on snapshot.
    #[arg(long, value_name = "DIR", requires = "snapshot_on")]
    snapshot_dir: Option<PathBuf>,
    /// Stop the VM once the --snapshot-on snapshot is saved (otherwise it runs on).
    #[arg(long, requires = "snapshot_on")]
    exit_after_snapshot: bool,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Text appended to ftvm's default kernel command line (which keeps a Linux guest
    /// deterministic: serial console, no APIC/ACPI/PCI, no TSC or paravirtual clock).
    /// Put `-- COMMAND` last to hand a command to the guest's init.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    cmdline: String,
    /// Use --cmdline exactly as given, without ftvm's default.
    #[arg(long)]
    no_default_cmdline: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Guest time: 'host' (host monotonic time while running) or 'exits:NS' (NS
    /// nanoseconds per synchronous exit; halts skip to the next timer: fully deterministic).
    #[arg(long, default_value = "host")]
    clock: ClockMode,
    /// Write every synchronous exit (ordinal, reason, RIP, port/address, value) and every
    /// injected interrupt to this file.
    #[arg(long, value_name = "FILE")]
    trace_exits: Option<PathBuf>,
    /// Write a flat profile of where the guest spent its time (RIP and CPL sampled at
    /// exits, weighted by host time) to this file when the VM stops. Does not change
    /// what the guest does or what a recording logs.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Name the profile's kernel addresses from this System.map or copy of the guest's
    /// /proc/kallsyms (Debian's kernel package ships only a placeholder System.map; the
    /// real one is in its -dbg package).
    #[arg(long, value_name = "FILE", requires = "profile")]
    profile_symbols: Option<PathBuf>,
    /// A raw disk image for the guest, as a virtio-blk device on a PCI bus (/dev/vda,
    /// /dev/vdb, ... in order); several allowed. The file must exist and be a multiple
    /// of 512 bytes; ',readonly' attaches it read-only. Without --disk the machine has no
    /// PCI bus. With --restore: another copy of each disk the snapshot was taken with
    /// (same size and contents), in the same order; by default the recorded paths.
    #[arg(long, value_name = "PATH[,readonly]")]
    disk: Vec<ftvm::disk::DiskSpec>,
    /// A network card for the guest: a virtio-net function on the PCI bus, backed by the
    /// existing host TAP device NAME (ftvm never creates one; e.g. 'ip tuntap add NAME mode
    /// tap'). MAC defaults to 52:54:00:12:34:56. With --restore: the TAP to attach the
    /// snapshot's NIC to (any TAP; the MAC stays the saved one). `replay` takes the NIC
    /// from its log and never opens a TAP; a --net given to it is checked against the log.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Option<ftvm::net::NetSpec>,
}

/// Serial output straight to stdout, flushed at once so prompts appear.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Bytes from our stdin, for the guest's serial port. The channel closes at end of input.
fn spawn_stdin_reader() -> crossbeam_channel::Receiver<Vec<u8>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    rx
}

fn run(args: RunArgs, log_file: LogFile) -> anyhow::Result<i32> {
    request_profile(&args)?;
    install_stop_signals()?;
    let (snap_tx, snap_rx) = crossbeam_channel::bounded(1);
    let pause_request = std::sync::Arc::new(AtomicBool::new(false));
    let console: ftvm::platform::ConsoleOut = match &args.snapshot_on {
        Some(text) => Box::new(WatchedConsole::new(
            Stdout,
            text,
            snap_tx,
            pause_request.clone(),
        )),
        None => Box::new(Stdout),
    };
    let started = Instant::now();
    let log = match &log_file {
        LogFile::Off => LogStream::Off,
        LogFile::Record(path, encoding) => LogStream::Record(
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create log {}", path.display()))?,
            )),
            *encoding,
        ),
        LogFile::Replay(path) => LogStream::Replay(Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot open log {}", path.display()))?,
        ))),
    };
    let input = match log_file {
        LogFile::Replay(_) => None,
        _ => Some(spawn_stdin_reader()),
    };
    let mut vm = match (&args.restore, args.kernel) {
        (Some(dir), _) => Vm::restore(
            dir,
            console,
            input,
            args.trace_exits.as_deref(),
            pause_request,
            log,
            &args.disk,
            args.net.clone(),
        )?,
        (None, Some(kernel)) => {
            // A replayed machine has the NIC its log names, with or without --net. A log
            // that cannot be read here is reported by the replayer itself, below.
            let logged_nic = match &log_file {
                LogFile::Replay(path) => std::fs::File::open(path)
                    .ok()
                    .and_then(|f| ftvm::replay::logged_nic(std::io::BufReader::new(f)).ok())
                    .flatten()
                    .is_some(),
                _ => false,
            };
            let config = VmConfig {
                kernel,
                initrd: args.initrd,
                cmdline: ftvm::linux::build_cmdline(
                    &args.cmdline,
                    !args.no_default_cmdline,
                    !args.disk.is_empty() || args.net.is_some() || logged_nic,
                ),
                mem_mib: args.mem,
                clock: args.clock,
                trace_exits: args.trace_exits,
                disks: args.disk,
                net: args.net.clone(),
            };
            Vm::boot(&config, console, input, pause_request, log)?
        }
        (None, None) => anyhow::bail!("--kernel or --restore is required"),
    };
    vm.vcpu.resume();
    loop {
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            tracing::info!("stop requested by signal");
            break;
        }
        crossbeam_channel::select! {
            recv(snap_rx) -> _ => {
                if let Some(dir) = &args.snapshot_dir {
                    let t = Instant::now();
                    let manifest = vm.snapshot(dir)?;
                    eprintln!(
                        "ftvm: snapshot saved to {} ({} MiB of RAM) in {:.2} s",
                        dir.display(),
                        manifest.mem_mib,
                        t.elapsed().as_secs_f64()
                    );
                    if args.exit_after_snapshot {
                        break;
                    }
                    vm.vcpu.resume();
                }
            }
            default(Duration::from_millis(50)) => {}
        }
        if let Some(VcpuEvent::Stopped(_)) = vm.vcpu.next_event(Duration::ZERO) {
            break;
        }
    }
    let syscall_probe = vm.syscall_probe;
    let report = vm.vcpu.finish();
    if let Some(net) = &vm.net {
        eprintln!("ftvm: net: {}", net.counters());
    }
    Ok(summarise(&report, started, Some(syscall_probe)))
}

/// Print what a run did; returns its exit status.
fn summarise(
    report: &ftvm::vcpu::VcpuReport,
    started: Instant,
    syscall_probe: Option<ftvm::compat::syscall::SyscallProbe>,
) -> i32 {
    let m = &report.metrics;
    eprintln!(
        "ftvm: {} after {} exits in {:.3} s (pio in/out {}/{}, mmio r/w {}/{}, hlt {}, interrupts {} ({} after a kick), host exits {}; host repairs: {}; SYSCALL from user {})",
        report.stop,
        report.ordinal,
        started.elapsed().as_secs_f64(),
        m.pio_in,
        m.pio_out,
        m.mmio_read,
        m.mmio_write,
        m.hlt,
        m.interrupts_injected,
        m.kicked_injections,
        m.host_exits,
        m.compat,
        syscall_probe.map_or_else(|| "(see the role's log)".to_string(), |p| format!("{p:?}"))
    );
    match &report.log {
        Some(log) => report_log(log, report.stop.exit_code()),
        None => report.stop.exit_code(),
    }
}

fn install_stop_signals() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal)
            .context("cannot install signal handlers")?;
    }
    Ok(())
}

fn ft_options(pair: PairArgs, listen: Option<String>) -> anyhow::Result<ftvm::ft::FtOptions> {
    Ok(ftvm::ft::FtOptions {
        shared: ftvm::ft::shared::SharedDir::new(&pair.vm.shared_dir, &pair.vm.name)?,
        listen,
        peer_timeout: Duration::from_millis(pair.peer_timeout),
        buffer_bytes: (pair.buffer as usize) << 10,
        key: pair_key(pair.key_file.as_deref(), pair.insecure)?,
        disks: Vec::new(),
        stall_limit: Duration::from_millis(pair.stall_limit),
        output_cap: pair.output_cap << 10,
        metrics: pair.metrics,
        net: None,
        page_encoding: pair.page_encoding,
    })
}

/// Exit status of a pair member: the guest's, or 5 when it halted after losing its peer
/// and the test-and-set.
fn pair_outcome(outcome: ftvm::ft::Outcome, started: Instant) -> i32 {
    let probe = None;
    match outcome {
        ftvm::ft::Outcome::Stopped(report) => summarise(&report, started, probe),
        ftvm::ft::Outcome::Halted(why, report) => {
            eprintln!("ftvm: halted: {why}");
            summarise(&report, started, probe);
            5
        }
    }
}

/// `--profile`: sample the guest of this process (see `ftvm::profile`). The symbols are
/// read now, so that a bad file is an error before the guest runs, not after.
fn request_profile(run: &RunArgs) -> anyhow::Result<()> {
    if let Some(out) = &run.profile {
        if let Some(symbols) = &run.profile_symbols {
            ftvm::profile::Symbols::load(symbols)?;
        }
        ftvm::profile::request(out.clone(), run.profile_symbols.clone());
    }
    Ok(())
}

fn primary(args: PrimaryArgs) -> anyhow::Result<i32> {
    request_profile(&args.run)?;
    install_stop_signals()?;
    let run = args.run;
    if run.snapshot_on.is_some() || run.trace_exits.is_some() {
        anyhow::bail!("--snapshot-on and --trace-exits are for 'run', not for a primary");
    }
    let mut opts = ft_options(args.pair, Some(args.listen))?;
    if run.restore.is_some() {
        opts.disks = run.disk.clone();
    }
    opts.net = run.net.clone();
    let started = Instant::now();
    let pci = !run.disk.is_empty() || run.net.is_some();
    let config = run.kernel.map(|kernel| VmConfig {
        kernel,
        initrd: run.initrd,
        cmdline: ftvm::linux::build_cmdline(&run.cmdline, !run.no_default_cmdline, pci),
        mem_mib: run.mem,
        clock: run.clock,
        trace_exits: None,
        disks: run.disk,
        net: run.net,
    });
    let outcome = ftvm::ft::run_primary(
        config.as_ref(),
        run.restore.as_deref(),
        opts,
        spawn_stdin_reader(),
        &STOP_REQUESTED,
    )?;
    Ok(pair_outcome(outcome, started))
}

fn backup(args: BackupArgs) -> anyhow::Result<i32> {
    install_stop_signals()?;
    let mut opts = ft_options(args.pair, args.listen)?;
    opts.disks = args.disk;
    opts.net = args.net;
    let started = Instant::now();
    let outcome = ftvm::ft::run_backup(&args.primary, opts, spawn_stdin_reader(), &STOP_REQUESTED)?;
    Ok(pair_outcome(outcome, started))
}

/// The pair's key from `--key-file`, the public one under `--insecure`, or an error.
fn pair_key(
    file: Option<&std::path::Path>,
    insecure: bool,
) -> anyhow::Result<ftvm::ft::key::ChannelKey> {
    use ftvm::ft::key::ChannelKey;
    match (file, insecure) {
        (Some(f), _) => Ok(ChannelKey::load(f)?),
        (None, true) => {
            eprintln!(
                "ftvm: warning: --insecure: the logging channel's key is public; anyone who reaches it can join and read the guest's memory"
            );
            Ok(ChannelKey::public())
        }
        (None, false) => anyhow::bail!(
            "a fault-tolerant pair needs --key-file FILE on both VMMs (make one with 'ftvm keygen FILE'), or --insecure"
        ),
    }
}

fn keygen(args: KeygenArgs) -> anyhow::Result<i32> {
    use ftvm::ft::key::ChannelKey;
    match &args.file {
        Some(file) => {
            ChannelKey::create(file)?;
            eprintln!("ftvm: wrote a new channel key to {}", file.display());
        }
        None => ChannelKey::random()?.write_to_stdout()?,
    }
    Ok(0)
}

fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let vm = args.vm;
    let shared = ftvm::ft::shared::SharedDir::new(&vm.shared_dir, &vm.name)?;
    if args.json {
        let owner = shared.current_owner()?;
        anyhow::ensure!(
            owner.is_some(),
            "no VM '{}' in {}",
            vm.name,
            vm.shared_dir.display()
        );
        let (mut vmms, mut unreadable) = (Vec::new(), Vec::new());
        for path in shared.status_files()? {
            match ftvm::ft::status::StatusReport::read(&path) {
                Ok(r) => vmms.push(r),
                Err(e) => unreadable.push(e),
            }
        }
        let (epoch, holder) = owner.unzip();
        let out = serde_json::json!({
            "vm": vm.name,
            "epoch": epoch,
            "owner": holder,
            "now_unix_ms": ftvm::ft::status::now_unix_ms(),
            "vmms": vmms,
            "unreadable": unreadable,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    match shared.current_owner()? {
        Some((epoch, holder)) => println!("{}: epoch {epoch} owned by {holder}", vm.name),
        None => anyhow::bail!("no VM '{}' in {}", vm.name, vm.shared_dir.display()),
    }
    let now = ftvm::ft::status::now_unix_ms();
    for path in shared.status_files()? {
        match ftvm::ft::status::StatusReport::read(&path) {
            Ok(r) => println!("{}", r.render(now)),
            Err(e) => println!("unreadable status {e}"),
        }
    }
    Ok(0)
}

fn console(args: ConsoleArgs) -> anyhow::Result<i32> {
    install_stop_signals()?;
    let shared = ftvm::ft::shared::SharedDir::new(&args.vm.shared_dir, &args.vm.name)?;
    let path = shared.console_path();
    let mut file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open the console stream {}", path.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = std::io::stdout().lock();
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            out.flush()?;
            continue;
        }
        if !args.follow || STOP_REQUESTED.load(Ordering::SeqCst) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Print what a recording or replay measured; the exit status of a replay says whether
/// it matched (0 or the guest's own status), failed to read its log (3) or ended in a
/// different state (4).
fn report_log(log: &ftvm::vcpu::LogReport, guest_code: i32) -> i32 {
    let secs = log.guest_ns as f64 / 1e9;
    let role = if log.recording { "record" } else { "replay" };
    eprintln!(
        "ftvm {role}: log {} over {:.3} s of guest time ({:.0} bytes/s)",
        log.stats,
        secs,
        log.stats.bytes_per_second(secs)
    );
    if let Some(r) = &log.replay {
        eprintln!(
            "ftvm replay: {} exits verified, {} deltas applied ({} pages), {} divergences, {} exits skipped while recovering, {} received frames verified",
            r.exits_verified, r.deltas_applied, r.delta_pages_applied, r.divergences, r.exits_skipped, r.frames_verified
        );
    }
    if let Some(p) = &log.problem {
        eprintln!("ftvm {role}: {p}");
        return 3;
    }
    match (&log.digest, &log.recorded_digest) {
        (Some(d), None) => {
            eprintln!("ftvm record: final digest {d}");
            guest_code
        }
        (Some(ours), Some(theirs)) if ours == theirs => {
            eprintln!("ftvm replay: final digest {ours} matches the recording");
            guest_code
        }
        (Some(ours), Some(theirs)) => {
            eprintln!("ftvm replay: final state differs: recorded {theirs}, replayed {ours}");
            4
        }
        _ => {
            eprintln!("ftvm {role}: no final digest");
            3
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FTVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                // Asked-for help is a success; help shown because a subcommand is missing
                // is bad input, like a bad flag below.
                std::process::exit(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        1
                    } else {
                        0
                    },
                );
            }
            // One line: clap's first line names the problem; the usage follows in --help.
            // Exit 1 (bad input), not clap's 2, which ftvm uses for "the guest crashed".
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("ftvm: error: {first} (see 'ftvm --help')");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args, LogFile::Off),
        Command::Record(a) => run(a.run, LogFile::Record(a.log, a.page_encoding)),
        Command::Replay(a) => run(a.run, LogFile::Replay(a.log)),
        Command::Primary(a) => primary(a),
        Command::Backup(a) => backup(a),
        Command::Keygen(a) => keygen(a),
        Command::Status(a) => status(a),
        Command::Console(a) => console(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ftvm: error: {e:#}");
            std::process::exit(1);
        }
    }
}
