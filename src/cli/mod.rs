//! The command line: one binary, subcommands that use the same code paths as the actors.

pub mod cluster;
pub mod convert;
pub mod dump;
pub mod send;
pub mod serve;

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
}
