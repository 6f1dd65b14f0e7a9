//! The `ftvm` command line: parses the arguments (see `cli`) and runs the subcommand;
//! `anyhow` only here.

mod cli;

use clap::Parser;

use cli::args::{Cli, Command, LogFile};

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
        Command::Run(args) => cli::single::run(args, LogFile::Off),
        Command::Record(a) => {
            a.placement.request();
            cli::single::run(a.run, LogFile::Record(a.log, a.page_encoding))
        }
        Command::Replay(a) => {
            a.placement.request();
            cli::single::run(a.run, LogFile::Replay(a.log))
        }
        Command::Primary(a) => cli::pair::primary(a),
        Command::Backup(a) => cli::pair::backup(a),
        Command::Keygen(a) => cli::pair::keygen(a),
        Command::Status(a) => cli::shared_dir::status(a),
        Command::Console(a) => cli::shared_dir::console(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ftvm: error: {e:#}");
            std::process::exit(1);
        }
    }
}
