use clap::Parser;
use ipfixsvc::cli::{Cli, Command, dump};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Dump(args) => dump::run(args).map(|_| ()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipfixsvc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
