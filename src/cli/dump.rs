//! `ipfixsvc dump`: IPFIX files and packet captures -> NDJSON records (or templates, or counts).
//!
//! Templates are scoped as a collector would: per file for IPFIX files; per transport
//! (source, destination) for captures, then per Observation Domain inside the decoder.

use crate::meter::capture::{CaptureReader, FileKind, sniff_reader};
use crate::meter::messages::{Found, MessageFinder};
use crate::meter::transport::Protocol;
use crate::store::files::{Access, map_file};
use crate::wire::ndjson::Origin;
use crate::wire::{
    DecodedMessage, Decoder, DecoderOptions, FramingError, MessageReader, MessageSlices, Registry,
    TemplateEvent, TemplateKind,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Ports decoded as IPFIX/NetFlow without being asked: IANA's 4739 and the common NetFlow ones.
pub const DEFAULT_PORTS: [u16; 4] = [4739, 2055, 9995, 9996];

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// IPFIX files and packet captures.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also decode this UDP/TCP port in captures (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Print templates (and withdrawals) instead of data records.
    #[arg(long, conflicts_with = "count")]
    pub templates: bool,
    /// Decode everything, print only the counts as one JSON object.
    #[arg(long)]
    pub count: bool,
    /// Extra Information Elements (TOML: [[element]] pen, id, name, type, semantics, units).
    #[arg(long, value_name = "FILE")]
    pub elements: Option<PathBuf>,
    /// Largest IPFIX message accepted from a stream.
    #[arg(long, default_value_t = 65535)]
    pub max_message: usize,
    /// Read files with read(2) instead of mapping them into memory. Mapping is faster
    /// (no copy out of the page cache) but a file cut short by another process while it is
    /// read ends the process with SIGBUS: use this on files that are still being written.
    #[arg(long)]
    pub no_mmap: bool,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub messages: u64,
    pub templates: u64,
    pub options_templates: u64,
    pub withdrawals: u64,
    pub data_records: u64,
    pub options_records: u64,
    /// Data Sets that could not be decoded for want of their template.
    pub missing_template_sets: u64,
    pub errors: u64,
}

/// What dump does with each decoded message.
enum Mode<'a> {
    Records,
    Templates,
    Count,
    /// Hands it to another reader (`timeseries`, its job), with its exporter.
    Visit(&'a mut dyn Visit),
}

/// A reader of what `dump` decodes: `timeseries` and its job.
pub trait Visit {
    /// One decoded message and its exporter. `Break` stops the reading (a cancelled job).
    fn message(&mut self, exporter: &str, msg: &DecodedMessage) -> ControlFlow<()>;
    /// A problem with an input, said as `dump` says it (standard error by default; a job keeps
    /// them for its record).
    fn problem(&mut self, text: String) {
        eprintln!("{text}");
    }
    /// How far into input number `file` (of the list given) the reading is, in bytes: after
    /// every message of an IPFIX file and every packet of a capture, decoded or not, so a
    /// reader can stop (`Break`) on input that yields no message.
    fn position(&mut self, _file: usize, _bytes: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// A closure as a [`Visit`] that never stops and leaves problems on standard error.
pub struct Each<F>(pub F);

impl<F: FnMut(&str, &DecodedMessage)> Visit for Each<F> {
    fn message(&mut self, exporter: &str, msg: &DecodedMessage) -> ControlFlow<()> {
        (self.0)(exporter, msg);
        ControlFlow::Continue(())
    }
}

/// Decodes inputs and prints what the mode asks for; keeps the counts.
pub struct Dumper<'a, W: Write> {
    out: W,
    line: Vec<u8>,
    writer: crate::wire::ndjson_writer::RecordWriter,
    mode: Mode<'a>,
    registry: Arc<Registry>,
    pub counts: Counts,
    max_message: usize,
    no_mmap: bool,
    /// Capture state lives across files, so `dump templates.pcap data.pcap` decodes the data.
    decoders: HashMap<(SocketAddr, SocketAddr), Decoder>,
    finder: MessageFinder,
    /// The visitor said stop: no more messages, packets or files are read.
    stopped: bool,
    /// The input being read (its index in the list), for [`Visit::position`].
    file_index: usize,
}

pub fn run(args: &DumpArgs) -> anyhow::Result<Counts> {
    let registry = match &args.elements {
        Some(p) => Arc::new(Registry::with_extra_file(p)?),
        None => Registry::builtin(),
    };
    let stdout = std::io::stdout();
    let out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mode = if args.count {
        Mode::Count
    } else if args.templates {
        Mode::Templates
    } else {
        Mode::Records
    };
    let mut ports = DEFAULT_PORTS.to_vec();
    ports.extend(&args.ports);
    let mut d = Dumper {
        out,
        line: Vec::with_capacity(4096),
        writer: Default::default(),
        mode,
        registry,
        counts: Counts::default(),
        max_message: args.max_message,
        no_mmap: args.no_mmap,
        decoders: HashMap::new(),
        finder: MessageFinder::new(ports, args.max_message),
        stopped: false,
        file_index: 0,
    };
    let unusable = d.files(&args.files).map_err(super::stdout_error)?;
    if args.count {
        // Serialized first: serde_json's error would hide an EPIPE from stdout_error.
        let mut line = serde_json::to_vec(&d.counts)?;
        line.push(b'\n');
        d.out.write_all(&line).map_err(super::stdout_error)?;
    }
    d.out.flush().map_err(super::stdout_error)?;
    if unusable > 0 {
        // Each one has had its line above; main adds none.
        return Err(super::Reported(format!(
            "{unusable} of {} inputs could not be read",
            args.files.len()
        ))
        .into());
    }
    Ok(d.counts)
}

/// Reads `files` as `dump` does (IPFIX files, and IPFIX, NetFlow v9 and v5 in captures on
/// `ports` besides the default ones) and hands each decoded message to `visit` with its exporter
/// (a file's name, or a capture's `address:port`). Problems go to `visit` as `dump` words them;
/// inputs of which nothing could be read are counted in the answer.
pub fn each_message(
    files: &[PathBuf],
    registry: Arc<Registry>,
    ports: &[u16],
    visit: &mut dyn Visit,
) -> (Counts, usize) {
    let mut all_ports = DEFAULT_PORTS.to_vec();
    all_ports.extend(ports);
    let mut d = Dumper {
        out: std::io::sink(),
        line: Vec::new(),
        writer: Default::default(),
        mode: Mode::Visit(visit),
        registry,
        counts: Counts::default(),
        max_message: 65535,
        no_mmap: false,
        decoders: HashMap::new(),
        finder: MessageFinder::new(all_ports, 65535),
        stopped: false,
        file_index: 0,
    };
    // Nothing is written in this mode: no output error can come.
    let unusable = d.files(files).unwrap_or(0);
    (d.counts, unusable)
}

/// Why one input stopped.
enum FileError {
    /// Nothing of it could be read as IPFIX or a capture (missing, unreadable, empty, another
    /// format, a broken capture header, no IPFIX message at its start): dump exits non-zero,
    /// as tshark and nfdump do.
    Unusable(String),
    /// It stopped being readable after some of it was decoded (cut inside a message, a read
    /// error): what was read stays printed, and the run goes on, as for a malformed message.
    Stopped(String),
    /// Standard output failed; EPIPE is the `dump | head` case.
    Output(std::io::Error),
}

impl<W: Write> Dumper<'_, W> {
    /// Every input, tried as cat does: a problem with one is said and counted, and the next is
    /// read. The inputs of which nothing could be read; an error only when the output failed.
    fn files(&mut self, files: &[PathBuf]) -> std::io::Result<usize> {
        let mut unusable = 0;
        for (i, f) in files.iter().enumerate() {
            if self.stopped {
                break;
            }
            self.file_index = i;
            match self.file(f) {
                Ok(()) => {}
                Err(FileError::Output(e)) => return Err(e),
                Err(FileError::Stopped(why)) => {
                    self.counts.errors += 1;
                    self.problem(format!("{}: {why}", f.display()));
                }
                Err(FileError::Unusable(why)) => {
                    self.counts.errors += 1;
                    unusable += 1;
                    self.problem(format!("{}: {why}", f.display()));
                }
            }
        }
        Ok(unusable)
    }

    /// Said on standard error, or handed to the visitor.
    fn problem(&mut self, text: String) {
        match &mut self.mode {
            Mode::Visit(v) => v.problem(text),
            _ => eprintln!("{text}"),
        }
    }

    fn position(&mut self, bytes: u64) {
        if let Mode::Visit(v) = &mut self.mode
            && v.position(self.file_index, bytes).is_break()
        {
            self.stopped = true;
        }
    }

    fn file(&mut self, path: &Path) -> Result<(), FileError> {
        let file =
            File::open(path).map_err(|e| FileError::Unusable(format!("cannot open: {e}")))?;
        // 64 KiB: the message reader asks for at least that much, so its reads bypass this buffer.
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let kind = sniff_reader(&mut reader)
            .map_err(|e| FileError::Unusable(format!("cannot read: {e}")))?;
        match kind {
            FileKind::Ipfix => match map_file(reader.get_ref(), self.access(true)) {
                Some(all) => self.ipfix_messages(path, MessageSlices::new(all, self.max_message)),
                None => self.ipfix_messages(path, MessageReader::new(reader, self.max_message)),
            },
            FileKind::Pcap | FileKind::PcapNg => {
                let capture = match map_file(reader.get_ref(), self.access(false)) {
                    Some(all) => CaptureReader::from_bytes(all),
                    None => CaptureReader::new(reader),
                }
                .map_err(|e| FileError::Unusable(format!("not a readable capture: {e}")))?;
                self.capture(path, capture).map_err(FileError::Output)
            }
            // sniff_reader filled the buffer: nothing in it is nothing in the file.
            FileKind::Unknown(_) if reader.buffer().is_empty() => Err(FileError::Unusable(
                "empty: neither an IPFIX file nor a capture".into(),
            )),
            FileKind::Unknown(m) => Err(FileError::Unusable(format!(
                "neither an IPFIX file nor a capture (starts with {m:02x?})"
            ))),
        }
    }

    fn ipfix_messages<I>(&mut self, path: &Path, messages: I) -> Result<(), FileError>
    where
        I: Iterator<Item = Result<(u64, Bytes), FramingError>>,
    {
        let shown = path.display().to_string();
        let mut decoder = Decoder::new(self.registry.clone(), DecoderOptions::default());
        let mut framed = false;
        for m in messages {
            if self.stopped {
                break;
            }
            let (offset, msg) = match m {
                Ok(m) => m,
                // Two bytes of 0x000a make a file look like IPFIX; a first message that cannot
                // be framed says it is not.
                Err(e @ FramingError::Truncated { .. }) if !framed => {
                    return Err(FileError::Unusable(format!(
                        "cut short inside its first message: {e}"
                    )));
                }
                Err(e) if !framed => return Err(FileError::Unusable(format!("not IPFIX: {e}"))),
                Err(e) => return Err(FileError::Stopped(e.to_string())),
            };
            framed = true;
            let len = msg.len() as u64;
            self.message(&mut decoder, &shown, msg, &|| {
                format!("{shown}: message at offset {offset}")
            })
            .map_err(FileError::Output)?;
            self.position(offset + len);
        }
        Ok(())
    }

    /// IPFIX files are read whole (populated); captures page in as they are read.
    fn access(&self, populate: bool) -> Access {
        if self.no_mmap {
            Access::Read
        } else {
            Access::Map { populate }
        }
    }

    fn capture(
        &mut self,
        path: &Path,
        mut capture: CaptureReader<BufReader<File>>,
    ) -> std::io::Result<()> {
        let shown = path.display().to_string();
        // Taken out of `self` while `self` prints; put back for the next file.
        let mut decoders = std::mem::take(&mut self.decoders);
        let mut found = Vec::new();
        while let Some(p) = capture.next_packet() {
            if self.stopped {
                break;
            }
            let p = match p {
                Ok(p) => p,
                Err(e) => {
                    // A truncated capture ends here; what was read stays printed.
                    self.counts.errors += 1;
                    self.problem(format!("{shown}: capture ends early: {e}"));
                    break;
                }
            };
            found.clear();
            self.finder.feed(&p, &mut found);
            for f in found.drain(..) {
                match f {
                    Found::Message(m) => {
                        let decoder = decoders.entry((m.src, m.dst)).or_insert_with(|| {
                            Decoder::new(self.registry.clone(), options_for(m.protocol))
                        });
                        let exporter = m.src.to_string();
                        let (frame, offset) = (m.frame, m.offset);
                        self.message(decoder, &exporter, m.bytes, &|| match m.protocol {
                            Protocol::Udp => format!("{shown}: frame {frame}, offset {offset}"),
                            Protocol::Tcp => format!(
                                "{shown}: frame {frame}, TCP stream {exporter} offset {offset}"
                            ),
                        })?;
                    }
                    Found::Problem { frame, reason } => {
                        self.counts.errors += 1;
                        self.problem(format!("{shown}: frame {frame}: {reason}"));
                    }
                }
            }
            self.position(capture.position());
        }
        self.decoders = decoders;
        Ok(())
    }

    /// Decodes one message and prints what the mode asks for. A malformed message is reported
    /// and counted; the caller goes on with the next one.
    fn message(
        &mut self,
        decoder: &mut Decoder,
        exporter: &str,
        msg: Bytes,
        place: &dyn Fn() -> String,
    ) -> std::io::Result<()> {
        self.counts.messages += 1;
        let decoded = match decoder.decode(msg) {
            Ok(d) => d,
            Err(e) => {
                self.counts.errors += 1;
                self.problem(format!("{}: {e}", place()));
                return Ok(());
            }
        };
        self.tally(&decoded);
        match &mut self.mode {
            Mode::Count => Ok(()),
            Mode::Records => self.records(exporter, &decoded),
            Mode::Templates => self.templates(exporter, &decoded),
            Mode::Visit(visit) => {
                if visit.message(exporter, &decoded).is_break() {
                    self.stopped = true;
                }
                Ok(())
            }
        }
    }

    fn tally(&mut self, d: &DecodedMessage) {
        let c = &mut self.counts;
        for ev in &d.events {
            match ev {
                TemplateEvent::Define(t) if t.kind == TemplateKind::Data => c.templates += 1,
                TemplateEvent::Define(_) => c.options_templates += 1,
                _ => c.withdrawals += 1,
            }
        }
        for b in &d.batches {
            if b.plan.template.kind == TemplateKind::Options {
                c.options_records += b.len() as u64;
            } else {
                c.data_records += b.len() as u64;
            }
        }
        c.missing_template_sets += d.missing.len() as u64;
    }

    fn records(&mut self, exporter: &str, d: &DecodedMessage) -> std::io::Result<()> {
        let origin = Origin {
            exporter,
            tenant: None,
            domain: None,
        };
        for b in &d.batches {
            self.line.clear();
            self.writer
                .write_rows(&mut self.line, origin, d, b, 0..b.len(), &self.registry);
            self.out.write_all(&self.line)?;
        }
        Ok(())
    }

    fn templates(&mut self, exporter: &str, d: &DecodedMessage) -> std::io::Result<()> {
        for ev in &d.events {
            let v = match ev {
                TemplateEvent::Define(t) => {
                    let fields: Vec<_> = t
                        .fields
                        .iter()
                        .map(|f| {
                            let e = self.registry.resolve(f.pen, f.id);
                            serde_json::json!({
                                "id": f.id, "pen": f.pen, "length": f.length,
                                "name": e.name, "type": e.data_type.iana_name(),
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "@exporter": exporter, "@domain": d.header.observation_domain,
                        "@template": t.id, "kind": t.kind, "scopeFieldCount": t.scope_field_count,
                        "fields": fields,
                    })
                }
                TemplateEvent::Withdraw { kind, id } => serde_json::json!({
                    "@exporter": exporter, "@domain": d.header.observation_domain,
                    "@template": id, "kind": kind, "withdrawn": true,
                }),
                TemplateEvent::WithdrawAll { kind } => serde_json::json!({
                    "@exporter": exporter, "@domain": d.header.observation_domain,
                    "kind": kind, "withdrawnAll": true,
                }),
            };
            serde_json::to_writer(&mut self.out, &v)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// RFC 7011 section 8.4: over UDP, withdrawals are ignored.
fn options_for(p: Protocol) -> DecoderOptions {
    DecoderOptions {
        honour_withdrawals: p == Protocol::Tcp,
        ..DecoderOptions::default()
    }
}
