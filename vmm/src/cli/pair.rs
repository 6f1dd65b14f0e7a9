//! `ftvm primary`, `backup` and `keygen`: the members of a fault-tolerant pair and their
//! channel key.

use std::time::{Duration, Instant};

use ftvm::machine::VmConfig;

use super::args::{BackupArgs, KeygenArgs, PairArgs, PrimaryArgs};
use super::report::summarise;
use super::single::request_profile;
use super::{install_stop_signals, spawn_stdin_reader, STOP_REQUESTED};

pub(crate) fn ft_options(
    pair: PairArgs,
    listen: Option<String>,
) -> anyhow::Result<ftvm::ft::FtOptions> {
    pair.placement.request();
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
pub(crate) fn pair_outcome(outcome: ftvm::ft::Outcome, started: Instant) -> i32 {
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

pub(crate) fn primary(args: PrimaryArgs) -> anyhow::Result<i32> {
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
    let boot_event_bound_ns = run.boot_event_bound_ns();
    let config = run.kernel.map(|kernel| VmConfig {
        kernel,
        initrd: run.initrd,
        cmdline: ftvm::linux::build_cmdline(&run.cmdline, !run.no_default_cmdline, pci),
        mem_mib: run.mem,
        clock: run.clock,
        boot_seed: !run.no_boot_seed,
        boot_event_bound_ns,
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

pub(crate) fn backup(args: BackupArgs) -> anyhow::Result<i32> {
    install_stop_signals()?;
    let mut opts = ft_options(args.pair, args.listen)?;
    opts.disks = args.disk;
    opts.net = args.net;
    let started = Instant::now();
    let outcome = ftvm::ft::run_backup(&args.primary, opts, spawn_stdin_reader(), &STOP_REQUESTED)?;
    Ok(pair_outcome(outcome, started))
}

/// The pair's key from `--key-file`, the public one under `--insecure`, or an error.
pub(crate) fn pair_key(
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

pub(crate) fn keygen(args: KeygenArgs) -> anyhow::Result<i32> {
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
