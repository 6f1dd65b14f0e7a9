//! `kvserver`: one key/value server of the primary/backup service.
//!
//! Prints `kvserver NAME listening on ADDR` once it is ready, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ftvm_kv::server::{KvServer, ServerConfig};

#[derive(Parser)]
#[command(
    name = "kvserver",
    version,
    about = "Key/value server of the primary/backup service"
)]
struct Args {
    /// The view service's address: numeric IP:PORT.
    #[arg(long)]
    vs: SocketAddr,
    /// Address to listen on: numeric IP:PORT (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address the others use to reach this server, and its name in views (default: the
    /// address listened on; needed when listening on 0.0.0.0).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Ping interval, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    ping_interval_ms: u64,
    /// Timeout of calls to the view service and to the backup, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    rpc_timeout_ms: u64,
    /// How long to retry binding a port still in use (restart on the same address), in
    /// milliseconds.
    #[arg(long, default_value_t = 5000)]
    bind_retry_ms: u64,
    /// Print view changes on stderr.
    #[arg(short, long)]
    verbose: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.listen.ip().is_unspecified() && args.advertise.is_none() {
        anyhow::bail!(
            "--listen {} needs --advertise ADDR (the address others use)",
            args.listen
        );
    }
    let mut config = ServerConfig::new(args.vs.to_string(), args.listen);
    config.advertise = args.advertise.map(|a| a.to_string());
    config.ping_interval = Duration::from_millis(args.ping_interval_ms);
    config.rpc_timeout = Duration::from_millis(args.rpc_timeout_ms);
    config.bind_retry = Duration::from_millis(args.bind_retry_ms);
    config.verbose = args.verbose;
    let server = KvServer::start(config)?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "kvserver {} listening on {}",
        server.me(),
        server.addr()
    )
    .context("stdout")?;
    out.flush().context("stdout")?;
    server.wait();
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("kvserver: {e:#}");
        std::process::exit(1);
    }
}
