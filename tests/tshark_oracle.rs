//! Decoding every capture and file in `../shared/testdata/ipfix` must agree with tshark's
//! decoding of the same bytes, field by field. The expected files in `tests/expected` were made by
//! `tests/oracle/tshark_expected.py` from tshark 4.0 (see `tests/expected/README.md`); they are
//! never edited by hand.
//!
//! Where tshark and the codec legitimately differ, the difference is named here:
//! - tshark 4.0 knows no IANA elements newer than its release (e.g. 492-498) and no vendor
//!   elements: it shows their bytes. We decode them by the IANA registry; positions and bytes
//!   are still checked.
//! - tshark drops empty variable-length fields; we keep them (empty string or octets).
//! - tshark stops strings at the first NUL; we trim NUL padding at the end. Compared up to the
//!   first NUL.
//! - dateTimeMicroseconds: RFC 7011 section 6.1.9 says the low 11 bits of the NTP fraction are
//!   not significant; we clear them, tshark does not (difference < 0.5 microseconds).

use ipfixsvc::meter::capture::CaptureReader;
use ipfixsvc::meter::messages::{Found, MessageFinder};
use ipfixsvc::meter::transport::Protocol;
use ipfixsvc::wire::ndjson::ntp_to_unix;
use ipfixsvc::wire::{
    Batch, DecodedMessage, Decoder, DecoderOptions, MessageReader, Registry, TemplateEvent, Value,
    WireError,
};
use serde_json::Value as J;
use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata")
}

/// Our decoding of one input: (frame, offset of the message in the frame, result).
type Decoded = Vec<(u64, u64, Result<DecodedMessage, WireError>)>;

fn decode_inputs(inputs: &[PathBuf], ports: Vec<u16>) -> Decoded {
    let mut out = Vec::new();
    let registry = Registry::builtin();
    if inputs.len() == 1 && inputs[0].extension().is_some_and(|e| e == "ipfix") {
        let f = std::fs::File::open(&inputs[0]).expect("open .ipfix");
        let mut d = Decoder::new(registry, DecoderOptions::default());
        for (i, m) in MessageReader::new(f, 65535).enumerate() {
            let (_, bytes) = m.expect("file frames cleanly");
            out.push((i as u64 + 1, 0, d.decode(bytes)));
        }
        return out;
    }
    let mut finder = MessageFinder::new(ports, 65535);
    let mut decoders: HashMap<_, Decoder> = HashMap::new();
    let mut frame_base = 0;
    let mut found = Vec::new();
    for input in inputs {
        let file = std::fs::File::open(input).expect("open capture");
        let mut cap = CaptureReader::new(BufReader::new(file)).expect("capture header");
        let mut last = 0;
        while let Some(p) = cap.next_packet() {
            let mut p = p.expect("capture reads");
            last = p.frame;
            p.frame += frame_base;
            finder.feed(&p, &mut found);
            for f in found.drain(..) {
                let Found::Message(m) = f else {
                    panic!("unexpected problem: {f:?}")
                };
                let d = decoders.entry((m.src, m.dst)).or_insert_with(|| {
                    Decoder::new(
                        registry.clone(),
                        DecoderOptions {
                            honour_withdrawals: m.protocol == Protocol::Tcp,
                            ..DecoderOptions::default()
                        },
                    )
                });
                out.push((m.frame, m.offset, d.decode(m.bytes)));
            }
        }
        frame_base += last;
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unix_ns(secs: i64, nanos: u32) -> i128 {
    secs as i128 * 1_000_000_000 + nanos as i128
}

/// Compares our value with tshark's; `None` when they agree (or tshark's kind says nothing more
/// than the bytes, which are checked elsewhere).
fn value_mismatch(ours: Value<'_>, e: &J) -> Option<String> {
    let kind = e["kind"].as_str().unwrap_or("");
    let v = &e["value"];
    let ok = match (kind, ours) {
        ("uint", Value::Unsigned(x)) => v.as_u64() == Some(x),
        ("int", Value::Signed(x)) => v.as_i64() == Some(x),
        ("ipv4", Value::Ipv4(a)) => v.as_str() == Some(&a.to_string()),
        ("ipv6", Value::Ipv6(a)) => v.as_str() == Some(&a.to_string()),
        ("mac", Value::Mac(m)) => {
            let s = m
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            v.as_str() == Some(&s)
        }
        ("string", Value::String(b)) => {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            v.as_str() == Some(&String::from_utf8_lossy(&b[..end]))
        }
        ("time", t) => {
            let theirs: i128 = v.as_str().and_then(|s| s.parse().ok()).unwrap_or(i128::MIN);
            let (ns, tolerance) = match t {
                Value::DateTimeSeconds(s) => (unix_ns(s as i64, 0), 0),
                Value::DateTimeMilliseconds(ms) => (ms as i128 * 1_000_000, 0),
                Value::DateTimeMicroseconds(n) => {
                    let (s, ns) = ntp_to_unix(n);
                    (unix_ns(s, ns), 1_000)
                }
                Value::DateTimeNanoseconds(n) => {
                    let (s, ns) = ntp_to_unix(n);
                    (unix_ns(s, ns), 1)
                }
                Value::Unsigned(x) => (x as i128 * 1_000_000_000, 0),
                _ => return Some(format!("time vs our {ours:?}")),
            };
            (ns - theirs).abs() <= tolerance
        }
        ("reltime", Value::Unsigned(ms)) => {
            v.as_i64().map(|n| n as i128) == Some(ms as i128 * 1_000_000)
        }
        ("float", Value::Float(x)) => v
            .as_f64()
            .is_some_and(|t| (t - x).abs() <= 1e-6 * t.abs().max(1.0)),
        ("bool", Value::Bool(b)) => v.as_bool() == Some(b),
        // tshark shows bytes for what it does not know; the bytes are compared by position.
        ("bytes", _) => true,
        // tshark typed a field that our registry types differently: show it.
        _ => false,
    };
    (!ok).then(|| format!("tshark {kind} {v} vs ours {ours:?}"))
}

/// The Information Element of a tshark NetFlow v5 record field.
fn v5_element(tshark_field: &str) -> Option<u64> {
    Some(match tshark_field.strip_prefix("cflow.")? {
        "srcaddr" => 8,
        "dstaddr" => 12,
        "nexthop" => 15,
        "inputint" => 10,
        "outputint" => 14,
        "packets" => 2,
        "octets" => 1,
        "timestart" => 22,
        "timeend" => 21,
        "srcport" => 7,
        "dstport" => 11,
        "padding" => 210,
        "tcpflags" => 6,
        "protocol" => 4,
        "tos" => 5,
        "srcas" => 16,
        "dstas" => 17,
        "srcmask" => 9,
        "dstmask" => 13,
        _ => return None,
    })
}

/// Compares the records of one of our batches with tshark's, entry by entry; returns how many
/// fields were compared.
fn compare_records(
    at: &str,
    ours: &DecodedMessage,
    batch: &Batch,
    moff: u64,
    records: &[J],
    p: &mut impl FnMut(String),
) -> usize {
    let mut fields_checked = 0;
    for (r, rec) in records.iter().enumerate() {
        let spans: Vec<_> = (0..batch.plan.fields.len())
            .map(|f| batch.field_span(r, f))
            .collect();
        let mut matched = vec![false; spans.len()];
        for e in rec.as_array().into_iter().flatten() {
            if e.get("part_of_ie").is_some() {
                continue;
            }
            let eoff = e["offset"].as_u64().unwrap_or(0);
            let Some(f) = spans
                .iter()
                .position(|s| moff + s.start as u64 == eoff && s.len > 0)
            else {
                p(format!(
                    "{at}: record {r}: tshark field {} at {eoff} matches none of ours",
                    e["field"]
                ));
                continue;
            };
            matched[f] = true;
            fields_checked += 1;
            let pf = &batch.plan.fields[f];
            // tshark annotates NetFlow v5 entries with no element (v5 has no template): its
            // field names say which one the bytes are.
            let ie = match e["ie"].as_u64() {
                Some(ie) => Some(ie),
                None if ours.header.version == 5 => e["field"].as_str().and_then(v5_element),
                None => None,
            };
            if let Some(ie) = ie
                && (pf.spec.id as u64 != ie || pf.spec.pen as u64 != e["pen"].as_u64().unwrap_or(0))
            {
                p(format!(
                    "{at}: record {r}: field at {eoff} is ie {ie}, ours {}/{}",
                    pf.spec.pen, pf.spec.id
                ));
            }
            let want_len = e
                .get("field_length")
                .and_then(J::as_u64)
                .unwrap_or(e["length"].as_u64().unwrap_or(0));
            if spans[f].len as u64 != want_len {
                p(format!(
                    "{at}: record {r}: {} length {want_len} vs ours {}",
                    pf.element.name, spans[f].len
                ));
            }
            let bytes = &ours.buf[spans[f].range()];
            if e.get("field_length").is_none() && e["raw"].as_str() != Some(&hex(bytes)) {
                p(format!(
                    "{at}: record {r}: {} bytes differ",
                    pf.element.name
                ));
            }
            if e.get("bitmask").is_some() || e.get("field_length").is_some() {
                continue; // tshark shows part of the field's bits
            }
            if let Some(msg) = value_mismatch(batch.value(&ours.buf, r, f), e) {
                p(format!(
                    "{at}: record {r}: {} ({}): {msg}",
                    pf.element.name, e["field"]
                ));
            }
        }
        for (f, ok) in matched.iter().enumerate() {
            if !ok && spans[f].len > 0 {
                p(format!(
                    "{at}: record {r}: our field {} has no tshark counterpart",
                    batch.plan.fields[f].element.name
                ));
            }
        }
    }
    fields_checked
}

fn compare(expected_path: &Path) -> (usize, Vec<String>) {
    let exp: J = serde_json::from_slice(&std::fs::read(expected_path).expect("read expected"))
        .expect("json");
    let name = expected_path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let inputs: Vec<PathBuf> = exp["source"]
        .as_str()
        .expect("source")
        .split(" + ")
        .map(|s| testdata().join(s))
        .collect();
    let mut ports = vec![2055, 4739, 9996];
    for d in exp["decode_as"].as_array().into_iter().flatten() {
        let port = d
            .as_str()
            .and_then(|s| s.strip_prefix("udp.port=="))
            .and_then(|s| s.split(',').next());
        ports.extend(port.and_then(|p| p.parse::<u16>().ok()));
    }
    let ours = decode_inputs(&inputs, ports);
    let mut by_place: HashMap<(u64, u64), &Result<DecodedMessage, WireError>> = HashMap::new();
    for (frame, off, r) in &ours {
        by_place.insert((*frame, *off), r);
    }
    let mut problems = Vec::new();
    let mut fields_checked = 0;
    let exp_msgs = exp["messages"].as_array().expect("messages");
    let mut p = |s: String| problems.push(format!("{name}: {s}"));
    for m in exp_msgs {
        let (frame, moff) = (
            m["frame"].as_u64().unwrap_or(0),
            m["offset"].as_u64().unwrap_or(0),
        );
        let at = format!("frame {frame} offset {moff}");
        let Some(result) = by_place.get(&(frame, moff)) else {
            p(format!(
                "{at}: tshark decoded a message here, we found none"
            ));
            continue;
        };
        let ours = match result {
            Ok(d) => d,
            Err(e) => {
                p(format!("{at}: tshark decodes it, we fail: {e}"));
                continue;
            }
        };
        // The header as tshark read it. NetFlow v5 has no domain: engine type and id are ours.
        let h = &ours.header;
        let domain = match m["version"].as_u64() {
            Some(5) => m["engine_type"]
                .as_u64()
                .zip(m["engine_id"].as_u64())
                .map(|(t, i)| t << 8 | i),
            _ => m["observation_domain"].as_u64(),
        };
        let header = [
            (
                "export_time",
                m["export_time"].as_u64(),
                Some(h.export_time),
            ),
            ("sequence", m["sequence"].as_u64(), Some(h.sequence)),
            ("domain", domain, Some(h.observation_domain)),
            ("sys_uptime", m["sys_uptime"].as_u64(), h.sys_uptime_ms),
        ];
        for (what, theirs, ours) in header {
            if theirs != ours.map(u64::from) {
                p(format!(
                    "{at}: header {what}: tshark {theirs:?}, ours {ours:?}"
                ));
            }
        }
        if let Some(records) = m["v5_records"].as_array() {
            match ours.batches.as_slice() {
                [batch] if batch.len() == records.len() => {
                    fields_checked += compare_records(&at, ours, batch, moff, records, &mut p);
                }
                other => p(format!(
                    "{at}: NetFlow v5: tshark {} records, ours {:?}",
                    records.len(),
                    other.iter().map(|b| b.len()).collect::<Vec<_>>()
                )),
            }
            continue;
        }
        for set in m["sets"].as_array().into_iter().flatten() {
            let soff = set["offset"].as_u64().unwrap_or(0);
            if let Some(templates) = set["templates"].as_array() {
                for t in templates {
                    let tid = t["template_id"].as_u64().unwrap_or(0) as u16;
                    let want: Vec<(u16, u32, u16)> = t["fields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| {
                            (
                                f["id"].as_u64().unwrap_or(0) as u16,
                                f["pen"].as_u64().unwrap_or(0) as u32,
                                f["length"].as_u64().unwrap_or(0) as u16,
                            )
                        })
                        .collect();
                    let found = ours.events.iter().any(|ev| match ev {
                        TemplateEvent::Define(ot) => {
                            ot.id == tid
                                && ot.scope_field_count as u64
                                    == t["scope_field_count"].as_u64().unwrap_or(0)
                                && ot
                                    .fields
                                    .iter()
                                    .map(|f| (f.id, f.pen, f.length))
                                    .collect::<Vec<_>>()
                                    == want
                        }
                        _ => false,
                    });
                    if !found {
                        p(format!("{at}: template {tid} not decoded as tshark has it"));
                    }
                }
                continue;
            }
            let Some(records) = set["records"].as_array() else {
                continue;
            };
            let batch = ours
                .batches
                .iter()
                .find(|b| moff + b.set_offset as u64 == soff);
            if set["decoded"].as_bool() != Some(true) {
                if batch.is_some() {
                    p(format!(
                        "{at}: set at {soff} undecoded by tshark but decoded by us"
                    ));
                }
                continue;
            }
            let Some(batch) = batch else {
                p(format!(
                    "{at}: set at {soff} ({} records) not decoded by us",
                    records.len()
                ));
                continue;
            };
            if batch.len() != records.len() {
                p(format!(
                    "{at}: set at {soff}: tshark {} records, ours {}",
                    records.len(),
                    batch.len()
                ));
                continue;
            }
            fields_checked += compare_records(&at, ours, batch, moff, records, &mut p);
        }
    }
    // Counts must match exactly.
    let c = &exp["counts"];
    let ok_msgs: Vec<_> = ours
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok())
        .collect();
    let defined = |opt: bool| {
        ok_msgs
            .iter()
            .flat_map(|m| &m.events)
            .filter(|e| matches!(e, TemplateEvent::Define(t) if (t.scope_field_count > 0) == opt))
            .count() as u64
    };
    // tshark's data_records are IPFIX and NetFlow v9 records; v5 records are counted apart.
    let records = |v5: bool| -> u64 {
        ok_msgs
            .iter()
            .filter(|m| (m.header.version == 5) == v5)
            .map(|m| m.data_records() as u64)
            .sum()
    };
    let counts = [
        ("messages", ours.len() as u64),
        ("template_records", defined(false)),
        ("options_template_records", defined(true)),
        ("data_records", records(false)),
        ("v5_records", records(true)),
    ];
    for (k, v) in counts {
        if c[k].as_u64() != Some(v) {
            p(format!("count {k}: tshark {}, ours {v}", c[k]));
        }
    }
    (fields_checked, problems)
}

#[test]
fn every_testdata_file_matches_tshark() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/expected")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "expected files missing: {}", files.len());
    let mut all = Vec::new();
    let mut checked = 0;
    for f in &files {
        let (n, problems) = compare(f);
        checked += n;
        all.extend(problems);
    }
    eprintln!(
        "{} files, {checked} fields compared with tshark",
        files.len()
    );
    assert!(
        all.is_empty(),
        "{} disagreements with tshark, first ones:\n{}",
        all.len(),
        all.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}
