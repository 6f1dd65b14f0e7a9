//! `kvclient`: a client of the primary/backup key/value service.
//!
//! `kvclient --vs 127.0.0.1:7000 put k v`, `get k`, `append k v`, `view`, `status ADDR`, and
//! for tests `append-many --key k --tag c1 --count 100`, which appends `c1.0;`, `c1.1;`, ...
//! one after the other and prints `appended N` at the end; `mixed --clients 3 --ops 20`
//! runs concurrent clients doing Get, Put and Append on shared keys and checks that what
//! they saw is linearizable (exit status 1 if not).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use ftvm_kv::client::{Clerk, ClerkConfig};
use ftvm_kv::linearizability;
use ftvm_kv::net::{Caller, Faults};
use ftvm_kv::protocol::{Request, Response};
use ftvm_kv::workload::{self, Mixed};

#[derive(Parser)]
#[command(
    name = "kvclient",
    version,
    about = "Client of the primary/backup key/value service"
)]
struct Args {
    /// The view service's address: numeric IP:PORT.
    #[arg(long)]
    vs: SocketAddr,
    /// Give up an operation after this many milliseconds (0: never).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Pause between attempts, in milliseconds.
    #[arg(long, default_value_t = 20)]
    retry_ms: u64,
    /// Timeout of one call, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    rpc_timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the value of KEY ("" if missing).
    Get { key: String },
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Append VALUE to the value of KEY.
    Append { key: String, value: String },
    /// Print the current view.
    View,
    /// Print what the server at ADDR says about itself.
    Status { addr: SocketAddr },
    /// Append "TAG.0;", "TAG.1;", ... "TAG.(COUNT-1);" to KEY, one after the other.
    AppendMany {
        #[arg(long)]
        key: String,
        #[arg(long)]
        tag: String,
        #[arg(long)]
        count: u64,
        /// Print each completed append.
        #[arg(long)]
        progress: bool,
        /// Start no more appends once FILE exists (COUNT is then the most).
        #[arg(long, value_name = "FILE")]
        stop_file: Option<PathBuf>,
    },
    /// CLIENTS concurrent clients, each doing OPS random Gets, Puts and Appends of unique
    /// values on KEYS shared keys (`k0`, `k1`, ...), between a read of every key before
    /// (their starting values) and after; the whole history goes to the linearizability
    /// checker. Prints `linearizable N operations ...`.
    Mixed {
        #[arg(long, default_value_t = 3)]
        clients: u64,
        #[arg(long, default_value_t = 20)]
        ops: u64,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        keys: u64,
        /// Seed of the choice of keys and operations.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print `ok CLIENT OP` after each completed operation.
        #[arg(long)]
        progress: bool,
        /// Start no more operations once FILE exists (OPS is then the most per client).
        #[arg(long, value_name = "FILE")]
        stop_file: Option<PathBuf>,
    },
    /// Measure: COUNT operations one after the other (a put then a get of its own key,
    /// alternating), each checked; prints the rate and latency percentiles.
    Bench {
        #[arg(long)]
        tag: String,
        #[arg(long)]
        count: u64,
    },
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ClerkConfig::new(args.vs.to_string());
    config.op_timeout = (args.timeout_ms > 0).then(|| Duration::from_millis(args.timeout_ms));
    config.retry_interval = Duration::from_millis(args.retry_ms);
    config.rpc_timeout = Duration::from_millis(args.rpc_timeout_ms);
    let mut clerk = Clerk::new(config.clone());
    match args.command {
        Command::Get { key } => println!("{}", clerk.get(&key)?),
        Command::Put { key, value } => clerk.put(&key, &value)?,
        Command::Append { key, value } => clerk.append(&key, &value)?,
        Command::View => {
            let caller = Caller::new(std::sync::Arc::new(Faults::default()), config.rpc_timeout);
            let r = ftvm_kv::client::get_view(&caller, &config.vs)?;
            println!("{} acked={}", r.view, r.acked);
        }
        Command::Status { addr } => {
            let caller = Caller::new(std::sync::Arc::new(Faults::default()), config.rpc_timeout);
            match caller.call(&addr.to_string(), &Request::Status)? {
                Response::Status(s) => println!("{s:?}"),
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
        }
        Command::AppendMany {
            key,
            tag,
            count,
            progress,
            stop_file,
        } => {
            let mut done = 0;
            while done < count && !stop_file.as_deref().is_some_and(Path::exists) {
                clerk.append(&key, &format!("{tag}.{done};"))?;
                if progress {
                    println!("ok {tag}.{done}");
                }
                done += 1;
            }
            println!("appended {done}");
        }
        Command::Mixed {
            clients,
            ops,
            keys,
            seed,
            progress,
            stop_file,
        } => mixed(
            &config,
            &Mixed {
                clients,
                ops_per_client: ops,
                keys,
                seed,
            },
            progress,
            stop_file.as_deref(),
        )?,
        Command::Bench { tag, count } => {
            let started = std::time::Instant::now();
            let mut latencies =
                Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
            for i in 0..count {
                let key = format!("{tag}.{}", i / 2);
                let t = std::time::Instant::now();
                if i % 2 == 0 {
                    clerk.put(&key, &format!("v{i}"))?;
                } else {
                    let got = clerk.get(&key)?;
                    anyhow::ensure!(got == format!("v{}", i - 1), "get {key}: {got:?}");
                }
                latencies.push(t.elapsed());
            }
            let secs = started.elapsed().as_secs_f64();
            latencies.sort();
            let pct = |p: usize| {
                latencies
                    .get((latencies.len().saturating_sub(1)) * p / 100)
                    .map_or(0.0, |d| d.as_secs_f64() * 1e3)
            };
            println!(
                "ops {count} seconds {secs:.3} ops_per_s {:.1} p50_ms {:.2} p99_ms {:.2} max_ms {:.2}",
                count as f64 / secs.max(1e-9),
                pct(50),
                pct(99),
                pct(100)
            );
        }
    }
    Ok(())
}

fn mixed(
    config: &ClerkConfig,
    spec: &Mixed,
    progress: bool,
    stop_file: Option<&Path>,
) -> anyhow::Result<()> {
    let report = |client: u64, op: u64| {
        if progress {
            println!("ok {client} {op}");
        }
    };
    let stop = || stop_file.is_some_and(Path::exists);
    let mut history = workload::read_initial(config, spec)?;
    let run = workload::run_mixed(config, spec, &report, &stop)?;
    history.ops.extend(run.ops);
    workload::read_back(config, spec, &mut history)?;
    let (gets, puts, appends) = history.counts();
    if let Err(e) = linearizability::check(&history.ops) {
        for op in &history.ops {
            eprintln!("{op:?}");
        }
        anyhow::bail!("{e}");
    }
    println!(
        "linearizable {} operations on {} keys ({gets} gets, {puts} puts, {appends} appends)",
        history.ops.len(),
        spec.keys
    );
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("kvclient: {e:#}");
        std::process::exit(1);
    }
}
