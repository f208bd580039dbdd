use clap::Parser;
use ipfixsvc::cli::{Cli, Command, cluster, convert, dump, send, serve};

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
        Command::Send(args) => send::run(args).map(|s| {
            eprintln!("{}", serde_json::to_string(&s).unwrap_or_default());
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `dump ... | head`: the reader left; that is not an error worth a message.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipfixsvc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
