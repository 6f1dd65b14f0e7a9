//! `viewservice`: the view service of the primary/backup key/value service.
//!
//! Prints `viewservice listening on ADDR` once it is ready, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ftvm_kv::vs_server::{ViewService, VsConfig};

#[derive(Parser)]
#[command(
    name = "viewservice",
    version,
    about = "View service of the primary/backup key/value service"
)]
struct Args {
    /// Address to listen on: numeric IP:PORT (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Ping interval, in milliseconds: one tick of the view service.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    ping_interval_ms: u64,
    /// A server is dead after this many ping intervals without a ping.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    dead_pings: u64,
    /// Print view changes on stderr.
    #[arg(short, long)]
    verbose: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = VsConfig::new(args.listen);
    config.ping_interval = Duration::from_millis(args.ping_interval_ms);
    config.dead_pings = args.dead_pings;
    config.verbose = args.verbose;
    let vs = ViewService::start(config)?;
    let mut out = std::io::stdout();
    writeln!(out, "viewservice listening on {}", vs.addr()).context("stdout")?;
    out.flush().context("stdout")?;
    loop {
        std::thread::park();
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("viewservice: {e:#}");
        std::process::exit(1);
    }
}
