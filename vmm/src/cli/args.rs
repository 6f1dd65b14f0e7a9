//! The command line's arguments (clap), one struct per subcommand and the groups they
//! share.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ftvm::clock::ClockMode;

#[derive(Parser)]
#[command(
    name = "ftvm",
    version,
    about = "A fault-tolerant virtual machine monitor on KVM"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct KeygenArgs {
    /// Where to write the key; must not exist. Default: standard output.
    #[arg(value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct NamedVm {
    /// Directory both VMMs of the pair can reach (NFS or local): test-and-set, console
    /// stream, status files.
    #[arg(long, value_name = "DIR")]
    pub(crate) shared_dir: PathBuf,
    /// Name of the VM (its files in the shared directory start with it).
    #[arg(long, default_value = "vm")]
    pub(crate) name: String,
}

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) vm: NamedVm,
    /// Print one JSON object (the owner of the current epoch and every VMM's report)
    /// instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
pub(crate) struct ConsoleArgs {
    #[command(flatten)]
    pub(crate) vm: NamedVm,
    /// Keep printing as the stream grows (until interrupted).
    #[arg(long)]
    pub(crate) follow: bool,
}

#[derive(clap::Args)]
pub(crate) struct PairArgs {
    #[command(flatten)]
    pub(crate) vm: NamedVm,
    /// Milliseconds of silence after which the peer counts as failed.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(20..=600_000))]
    pub(crate) peer_timeout: u64,
    /// Size of the log buffer on each side of the channel, in KiB (the primary's guest
    /// stalls when it is full).
    #[arg(long, default_value_t = 16384, value_name = "KIB", value_parser = clap::value_parser!(u64).range(64..=4_194_304))]
    pub(crate) buffer: u64,
    /// The pair's channel key (64 hex digits, mode 0600; `ftvm keygen` makes one). Both
    /// VMMs must hold the same: it authenticates them to each other and encrypts the
    /// logging channel.
    #[arg(long, visible_alias = "key", value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Run the pair without a secret: the channel uses a publicly known key, so anyone
    /// who reaches it can join as the backup and read the guest's memory. For trying
    /// ftvm out on a closed network only.
    #[arg(long, conflicts_with = "key_file")]
    pub(crate) insecure: bool,
    /// Milliseconds back-pressure may stall the guest before the peer counts as failed:
    /// one write to the peer that does not complete (it stopped reading), or console
    /// output waiting for room under --output-cap.
    #[arg(long, default_value_t = 5000, value_name = "MS", value_parser = clap::value_parser!(u64).range(20..=600_000))]
    pub(crate) stall_limit: u64,
    /// Console output a primary may hold under the output rule, in KiB; past it the
    /// guest's output waits for the backup's acknowledgements (at most --stall-limit).
    #[arg(long, default_value_t = 16384, value_name = "KIB", value_parser = clap::value_parser!(u64).range(1..=4_194_304))]
    pub(crate) output_cap: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
    /// How pages go to the backup (state transfer and checkpoints): `xor-lz4`, `xor-zstd`
    /// or `raw` (see `record --page-encoding`).
    #[arg(long, value_name = "ENCODING", default_value = "xor-lz4", value_parser = parse_page_encoding)]
    pub(crate) page_encoding: ft_log::pages::PageEncoding,
    #[command(flatten)]
    pub(crate) placement: PlacementArgs,
}

/// How events the recorder delivers between exits (at kicks) reach the replayer.
#[derive(clap::Args)]
pub(crate) struct PlacementArgs {
    /// `delta`: every kick as a checkpoint delta. `breakpoint`: a kick in guest kernel
    /// mode is logged as a point (RIP and registers) that the replayer finds again with a
    /// hardware breakpoint, where this host's breakpoints are exact (probed at start);
    /// other kicks as deltas. A smaller log, but a point in code whose registers come
    /// from the guest's own RDTSC reads cannot be found again (see the README).
    #[arg(long, value_name = "HOW", default_value = "delta", value_parser = ["breakpoint", "delta"])]
    pub(crate) place_events: String,
    /// Breakpoint hits a replay steps over looking for one point before it counts as a
    /// divergence.
    #[arg(long, value_name = "HITS", default_value_t = ftvm::vcpu::points::DEFAULT_SEARCH_BUDGET, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) point_search_budget: u64,
    /// Milliseconds of guest time after which a kick is logged as a checkpoint delta even
    /// where it could be a point (0: never), so that a replay that diverges recovers
    /// within that much of the guest's run.
    #[arg(long, value_name = "MS", default_value_t = ftvm::vcpu::points::DEFAULT_DELTA_INTERVAL_MS)]
    pub(crate) delta_interval: u64,
}

impl PlacementArgs {
    /// Make this the process's placement (see `ftvm::vcpu::points`).
    pub(crate) fn request(&self) {
        ftvm::vcpu::points::request(ftvm::vcpu::points::PlacementRequest {
            by_breakpoint: self.place_events == "breakpoint",
            search_budget: self.point_search_budget,
            delta_interval_ns: self.delta_interval.saturating_mul(1_000_000),
        });
    }
}

pub(crate) fn parse_page_encoding(name: &str) -> Result<ft_log::pages::PageEncoding, String> {
    ft_log::pages::PageEncoding::from_name(name)
        .ok_or_else(|| format!("'{name}' is not one of raw, xor-lz4, xor-zstd"))
}

#[derive(clap::Args)]
pub(crate) struct PrimaryArgs {
    #[command(flatten)]
    pub(crate) pair: PairArgs,
    /// Address to accept a backup on (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) pair: PairArgs,
    /// The primary's --listen address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) primary: String,
    /// Address to accept a new backup on once this one has gone live (re-protection).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// This host's copy of each of the guest's disks, in the primary's order: an image of
    /// the same size (its contents are brought up to date by the state transfer, and it
    /// is written by the replay from then on; a read-only disk's copy must already be
    /// equal).
    #[arg(long, value_name = "PATH[,readonly]")]
    pub(crate) disk: Vec<ftvm::disk::DiskSpec>,
    /// This host's TAP for the guest's network card (which the primary's guest has): it
    /// must exist from the start, and is neither read nor written until this backup
    /// goes live. `mac=` is checked against the guest's.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub(crate) net: Option<ftvm::net::NetSpec>,
}

#[derive(clap::Args)]
pub(crate) struct LogArgs {
    /// The log file (written by `record`, read by `replay`).
    #[arg(long, value_name = "FILE")]
    pub(crate) log: PathBuf,
    /// How `record` writes checkpoint pages: `xor-lz4` (the difference from the last
    /// version logged, lz4), `xor-zstd`, or `raw` (whole pages, the old format). A replay
    /// reads any.
    #[arg(long, value_name = "ENCODING", default_value = "xor-lz4", value_parser = parse_page_encoding)]
    pub(crate) page_encoding: ft_log::pages::PageEncoding,
    #[command(flatten)]
    pub(crate) placement: PlacementArgs,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

impl RunArgs {
    /// `--boot-event-bound-ms` in nanoseconds (None: 0, the live bound from the start).
    pub(crate) fn boot_event_bound_ns(&self) -> Option<u64> {
        (self.boot_event_bound_ms > 0).then(|| self.boot_event_bound_ms.saturating_mul(1_000_000))
    }
}

/// What a single VMM (`run`, `record`, `replay`) does with a log file: none, write one,
/// or follow one. (A pair member's role is `ftvm::ft::role::PairRole`.)
pub(crate) enum LogFile {
    Off,
    Record(PathBuf, ft_log::pages::PageEncoding),
    Replay(PathBuf),
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Kernel to boot: an ELF vmlinux (entered in 64-bit mode) or a bzImage.
    #[arg(long, required_unless_present = "restore")]
    pub(crate) kernel: Option<PathBuf>,
    /// Continue the VM saved in this snapshot directory instead of booting a kernel.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "cmdline", "no_default_cmdline", "mem", "clock"])]
    pub(crate) restore: Option<PathBuf>,
    /// Save a snapshot to --snapshot-dir as soon as the guest prints TEXT on its console.
    #[arg(long, value_name = "TEXT", requires = "snapshot_dir")]
    pub(crate) snapshot_on: Option<String>,
    /// Directory (must not exist) for the --snapshot-on snapshot.
    #[arg(long, value_name = "DIR", requires = "snapshot_on")]
    pub(crate) snapshot_dir: Option<PathBuf>,
    /// Stop the VM once the --snapshot-on snapshot is saved (otherwise it runs on).
    #[arg(long, requires = "snapshot_on")]
    pub(crate) exit_after_snapshot: bool,
    /// Initial ramdisk.
    #[arg(long)]
    pub(crate) initrd: Option<PathBuf>,
    /// Text appended to ftvm's default kernel command line (which keeps a Linux guest
    /// deterministic: serial console, no APIC/ACPI/PCI, no TSC or paravirtual clock).
    /// Put `-- COMMAND` last to hand a command to the guest's init.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub(crate) cmdline: String,
    /// Use --cmdline exactly as given, without ftvm's default.
    #[arg(long)]
    pub(crate) no_default_cmdline: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub(crate) mem: u64,
    /// Guest time: 'host' (host monotonic time while running) or 'exits:NS' (NS
    /// nanoseconds per synchronous exit; halts skip to the next timer: fully deterministic).
    #[arg(long, default_value = "host")]
    pub(crate) clock: ClockMode,
    /// Event bound in milliseconds while a kernel booted from --kernel has not yet been
    /// kicked in user mode (the live bound is 5 ms): its ticks then come mostly at its own
    /// exits, which on hosts that emulate kernel mode shortens the boot. 0: the live
    /// bound from the start. Ignored by `replay`, which follows its log.
    #[arg(long, value_name = "MS", default_value_t = ftvm::vcpu::DEFAULT_BOOT_EVENT_BOUND_NS / 1_000_000, conflicts_with = "restore")]
    pub(crate) boot_event_bound_ms: u64,
    /// Do not give a kernel booted from --kernel a random seed (by default it gets 32
    /// bytes from the host as Linux's SETUP_RNG_SEED boot data, logged when recording, so
    /// its random generator is ready from the start; never under the `exits` clock).
    #[arg(long, conflicts_with = "restore")]
    pub(crate) no_boot_seed: bool,
    /// Write every synchronous exit (ordinal, reason, RIP, port/address, value) and every
    /// injected interrupt to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) trace_exits: Option<PathBuf>,
    /// Write a flat profile of where the guest spent its time (RIP and CPL sampled at
    /// exits, weighted by host time) to this file when the VM stops. Does not change
    /// what the guest does or what a recording logs.
    #[arg(long, value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Name the profile's kernel addresses from this System.map or copy of the guest's
    /// /proc/kallsyms (Debian's kernel package ships only a placeholder System.map; the
    /// real one is in its -dbg package).
    #[arg(long, value_name = "FILE", requires = "profile")]
    pub(crate) profile_symbols: Option<PathBuf>,
    /// A raw disk image for the guest, as a virtio-blk device on a PCI bus (/dev/vda,
    /// /dev/vdb, ... in order); several allowed. The file must exist and be a multiple
    /// of 512 bytes; ',readonly' attaches it read-only. Without --disk the machine has no
    /// PCI bus. With --restore: another copy of each disk the snapshot was taken with
    /// (same size and contents), in the same order; by default the recorded paths.
    #[arg(long, value_name = "PATH[,readonly]")]
    pub(crate) disk: Vec<ftvm::disk::DiskSpec>,
    /// A network card for the guest: a virtio-net function on the PCI bus, backed by the
    /// existing host TAP device NAME (ftvm never creates one; e.g. 'ip tuntap add NAME mode
    /// tap'). MAC defaults to 52:54:00:12:34:56. With --restore: the TAP to attach the
    /// snapshot's NIC to (any TAP; the MAC stays the saved one). `replay` takes the NIC
    /// from its log and never opens a TAP; a --net given to it is checked against the log.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub(crate) net: Option<ftvm::net::NetSpec>,
}
