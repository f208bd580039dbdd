//! Packets -> flows (the Metering Process) and the capture reading it stands on. Pure and
//! synchronous. For now: streaming pcap/pcapng reading, slicing packets to their transport
//! payload, and TCP stream reassembly, which `dump` and `send` use to take IPFIX out of captures.

pub mod capture;
pub mod convert;
pub mod export;
pub mod flow;
pub mod flow_index;
pub mod messages;
pub mod packet;
pub mod prefetch;
pub mod tcp_stream;
pub mod transport;
