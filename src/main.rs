use clap::Parser;
use ipfixsvc::cli::{Cli, Command, cluster, convert, dump, send, serve, timeseries};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Dump(args) => dump::run(args).map(|_| ()),
        Command::Serve(args) => serve::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Convert(args) => convert::run(args).map(|s| {
            for w in &s.warnings {
                eprintln!("ipfixsvc convert: warning: {w}");
            }
            eprintln!("{}", serde_json::to_string(&s).unwrap_or_default());
        }),
        Command::Timeseries(args) => timeseries::run(args).map(|s| {
            if s.untimed > 0 {
                eprintln!(
                    "ipfixsvc timeseries: {} records had no time and are in no interval (totals.untimed)",
                    s.untimed
                );
            }
            eprintln!("{}", serde_json::to_string(&s).unwrap_or_default());
        }),
        Command::Send(args) => send::run(args).map(|s| {
            eprintln!("{}", serde_json::to_string(&s).unwrap_or_default());
        }),
    };
    ipfixsvc::cli::exit_code(result)
}
