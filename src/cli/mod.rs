//! The command line: one binary, subcommands that use the same code paths as the actors.

pub mod cluster;
pub mod convert;
pub mod dump;
pub mod send;
pub mod serve;
pub mod timeseries;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ipfixsvc",
    version,
    about = "IPFIX collector, converter and tools"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode IPFIX files (RFC 5655) and packet captures (pcap, pcapng; IPFIX and NetFlow v9
    /// over UDP or TCP) and print one JSON object per data record.
    Dump(dump::DumpArgs),
    /// Run a node: the Collecting Process (IPFIX over TCP and UDP) and, as they land, the API,
    /// mediator and jobs. Records go to standard output as NDJSON unless configured otherwise.
    Serve(serve::ServeArgs),
    /// Replay an IPFIX file or capture to a collector over TCP or UDP.
    Send(send::SendArgs),
    /// Ask a running cluster for its sessions or its view of itself.
    Cluster(cluster::ClusterArgs),
    /// Meter packet captures into flows and write them as an IPFIX file.
    Convert(convert::ConvertArgs),
    /// Turn flows (IPFIX files, captures carrying IPFIX) into time series per interval and
    /// key: octets, packets and flows, the top keys and `other`.
    Timeseries(timeseries::TimeseriesArgs),
}

/// The reader of standard output went away (`ipfixsvc dump ... | head`): the command stops and
/// exits 0 without a word, as cat and grep do. Only writes to standard output become this: a
/// broken socket or file is a real error, and must not be mistaken for a reader that had enough.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
pub struct StdoutClosed;

/// The command already said on standard error what went wrong, one line per cause: main exits
/// non-zero without printing it a second time.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// A failed write to standard output, as a command returns it: EPIPE becomes [`StdoutClosed`].
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

/// Result lines for standard output. `println!` panics when the reader has gone
/// (`ipfixsvc cluster sessions | head -2`); this returns [`StdoutClosed`] instead, which main
/// turns into a quiet exit 0. Generic over the writer so the EPIPE path can be tested.
pub struct Lines<W: std::io::Write> {
    out: W,
}

impl<W: std::io::Write> Lines<W> {
    pub fn new(out: W) -> Self {
        Lines { out }
    }

    pub fn line(&mut self, line: impl std::fmt::Display) -> anyhow::Result<()> {
        writeln!(self.out, "{line}").map_err(stdout_error)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().map_err(stdout_error)
    }
}

/// Lines on this process's standard output (line-buffered by std, so each line leaves at once).
pub fn stdout_lines() -> Lines<std::io::StdoutLock<'static>> {
    Lines::new(std::io::stdout().lock())
}

/// What main does with a command's error: quiet success for a closed standard output, quiet
/// failure for an error already reported, otherwise the message once.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.is::<StdoutClosed>()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.is::<Reported>()) => std::process::ExitCode::FAILURE,
        Err(e) => {
            // `{:#}` prints the chain `outer: inner: ...`; every error in it says only its own part.
            eprintln!("ipfixsvc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};

    /// Takes `room` bytes, then fails every write with `kind`.
    struct Closing {
        room: usize,
        kind: io::ErrorKind,
    }

    impl Write for Closing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from(self.kind));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_reader_stops_the_lines_quietly() {
        let mut out = Lines::new(Closing {
            room: 10,
            kind: io::ErrorKind::BrokenPipe,
        });
        out.line("first").expect("room for one line");
        let e = out.line("second line").expect_err("the reader is gone");
        assert!(e.is::<StdoutClosed>(), "{e:#}");
        assert_eq!(exit_code(Err(e)), std::process::ExitCode::SUCCESS);
    }

    #[test]
    fn other_write_errors_are_errors() {
        let mut out = Lines::new(Closing {
            room: 0,
            kind: io::ErrorKind::StorageFull,
        });
        let e = out.line("x").expect_err("disk full");
        assert!(!e.chain().any(|c| c.is::<StdoutClosed>()), "{e:#}");
        assert_eq!(exit_code(Err(e)), std::process::ExitCode::FAILURE);
    }

    #[test]
    fn a_broken_socket_is_not_a_closed_stdout() {
        // `send` to a collector that went away: the same errno, but a failure.
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("sending message 3");
        assert_eq!(exit_code(Err(e)), std::process::ExitCode::FAILURE);
    }
}
