//! `peers netgauze|netflow_parser FILE.ipfix [--expected N]`
//!
//! Reads an RFC 5655 IPFIX file (IPFIX messages back to back, each framed by the u16 length at
//! bytes 2..4 of its header) into memory, then times one loop that decodes every message with
//! the chosen crate, keeping that crate's template state across messages, and counts the Data
//! Records the crate hands back (each already decoded into the crate's typed field values).
//! Prints one JSON line.

use std::time::Instant;

#[derive(Default)]
struct Tally {
    messages: u64,
    records: u64,
    /// Messages the crate rejected (their records are not counted).
    errors: u64,
    /// Data Sets the crate returned undecoded for want of a template.
    missing_template_sets: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, offset: usize, e: impl std::fmt::Debug) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("message at offset {offset}: {e:?}"));
        }
    }
}

/// Calls `f(offset, message)` for each message of the file; stops at a truncated or bad header.
fn for_each_message(buf: &[u8], t: &mut Tally, mut f: impl FnMut(&mut Tally, usize, &[u8])) {
    let mut off = 0;
    while off < buf.len() {
        if buf.len() - off < 16 {
            t.error(off, "truncated message header");
            return;
        }
        let len = u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            t.error(off, format!("bad message length {len}"));
            return;
        }
        t.messages += 1;
        f(t, off, &buf[off..off + len]);
        off += len;
    }
}

fn netgauze(buf: &[u8]) -> Tally {
    use netgauze_flow_pkt::ipfix::{IpfixPacket, Set, TemplatesMap};
    use netgauze_parse_utils::reader::SliceReader;
    use netgauze_parse_utils::traits::ParseFromWithOneInput;

    let mut t = Tally::default();
    // The crate's own template cache (template id -> decoding template), kept across messages.
    let mut templates = TemplatesMap::new();
    for_each_message(buf, &mut t, |t, off, msg| {
        let mut cur = SliceReader::new(msg);
        match <IpfixPacket as ParseFromWithOneInput<'_, &mut TemplatesMap>>::parse(
            &mut cur,
            &mut templates,
        ) {
            Ok(pkt) => {
                for set in pkt.sets() {
                    if let Set::Data { records, .. } = set {
                        t.records += records.len() as u64;
                    }
                }
                std::hint::black_box(&pkt);
            }
            Err(e) => t.error(off, e),
        }
    });
    t
}

fn netflow_parser(buf: &[u8]) -> Tally {
    use netflow_parser::variable_versions::ipfix::FlowSetBody;
    use netflow_parser::{NetflowPacket, NetflowParser};

    let mut t = Tally::default();
    // The parser keeps its IPFIX template cache across calls.
    let mut parser = NetflowParser::default();
    for_each_message(buf, &mut t, |t, off, msg| {
        let res = parser.parse_bytes(msg);
        for pkt in &res.packets {
            let NetflowPacket::IPFix(ipfix) = pkt else {
                continue;
            };
            for fs in &ipfix.flowsets {
                match &fs.body {
                    FlowSetBody::Data(d) => t.records += d.fields.len() as u64,
                    FlowSetBody::V9Data(d) => t.records += d.fields.len() as u64,
                    FlowSetBody::NoTemplate(_) => t.missing_template_sets += 1,
                    _ => {}
                }
            }
        }
        if let Some(e) = &res.error {
            t.error(off, e);
        }
        std::hint::black_box(&res);
    });
    t
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn usage() -> ! {
    eprintln!("usage: peers netgauze|netflow_parser FILE.ipfix [--expected N]");
    std::process::exit(2);
}

fn main() {
    let wall = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (decoder, path) = match args.as_slice() {
        [d, p, ..] => (d.as_str(), p.as_str()),
        _ => usage(),
    };
    let expected: Option<u64> = match &args[2..] {
        [] => None,
        [flag, n] if flag == "--expected" => Some(n.parse().unwrap_or_else(|_| usage())),
        _ => usage(),
    };
    let decode: fn(&[u8]) -> Tally = match decoder {
        "netgauze" => netgauze,
        "netflow_parser" => netflow_parser,
        _ => usage(),
    };

    let buf = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1);
    });
    let read_seconds = wall.elapsed().as_secs_f64();

    let start = Instant::now();
    let t = decode(&buf);
    let seconds = start.elapsed().as_secs_f64();
    drop(buf);
    let wall_seconds = wall.elapsed().as_secs_f64();

    let expected_json = expected.map_or("null".to_string(), |n| n.to_string());
    let first_error = t.first_error.as_deref().map_or("null".to_string(), json_str);
    println!(
        "{{\"decoder\":{},\"file\":{},\"messages\":{},\"records\":{},\"expected_records\":{},\
         \"errors\":{},\"missing_template_sets\":{},\"seconds\":{:.6},\"records_per_s\":{:.0},\
         \"read_seconds\":{:.6},\"wall_seconds\":{:.6},\"first_error\":{}}}",
        json_str(decoder),
        json_str(path),
        t.messages,
        t.records,
        expected_json,
        t.errors,
        t.missing_template_sets,
        seconds,
        t.records as f64 / seconds,
        read_seconds,
        wall_seconds,
        first_error
    );
}
