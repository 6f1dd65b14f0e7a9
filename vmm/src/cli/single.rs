//! `ftvm run`, `record` and `replay`: one VMM, with or without a log file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ftvm::console::WatchedConsole;
use ftvm::machine::{LogStream, Resources, Vm, VmConfig, VmIo};
use ftvm::vcpu::VcpuEvent;

use super::args::{LogFile, RunArgs};
use super::report::summarise;
use super::{install_stop_signals, spawn_stdin_reader, Stdout, STOP_REQUESTED};

pub(crate) fn run(args: RunArgs, log_file: LogFile) -> anyhow::Result<i32> {
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
    let io = VmIo::new(console, pause_request).input(input).log(log);
    let boot_event_bound_ns = args.boot_event_bound_ns();
    let mut vm = match (&args.restore, args.kernel) {
        (Some(dir), _) => Vm::restore(
            dir,
            Resources {
                trace_exits: args.trace_exits.as_deref(),
                disks: args.disk.clone(),
                net: args.net.clone(),
            },
            io,
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
                boot_seed: !args.no_boot_seed,
                boot_event_bound_ns,
                trace_exits: args.trace_exits,
                disks: args.disk,
                net: args.net.clone(),
            };
            Vm::boot(&config, io)?
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

/// `--profile`: sample the guest of this process (see `ftvm::profile`). The symbols are
/// read now, so that a bad file is an error before the guest runs, not after.
pub(crate) fn request_profile(run: &RunArgs) -> anyhow::Result<()> {
    if let Some(out) = &run.profile {
        if let Some(symbols) = &run.profile_symbols {
            ftvm::profile::Symbols::load(symbols)?;
        }
        ftvm::profile::request(out.clone(), run.profile_symbols.clone());
    }
    Ok(())
}
