//! `ipfixsvc timeseries` against independent totals: on every capture and file of
//! `../shared/testdata/ipfix`, the series (every key and `other`) add up to what tshark decoded
//! from the same bytes (its expected decodings in `tests/expected`); on conversion results of
//! the traffic captures, to what `convert` metered. The hand-computed cases (spreading across
//! interval boundaries, biflows, `other`) are the unit tests of `src/analysis/series.rs`.

mod common;

use common::BIN;
use std::path::{Path, PathBuf};
use std::process::Command;

fn expected_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected")
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata")
}

/// tshark's totals of a capture's data records (options records left out): records, flows
/// (deltaFlowCount where a record has one), octets and packets (both directions of a biflow).
fn tshark_totals(exp: &serde_json::Value) -> (u64, u64, u64, u64) {
    let (mut records, mut flows, mut octets, mut packets) = (0, 0, 0, 0);
    // Options templates, by (frame's exporter is not needed: ids are checked per capture).
    let mut options = std::collections::HashSet::new();
    for m in exp["messages"].as_array().into_iter().flatten() {
        for s in m["sets"].as_array().into_iter().flatten() {
            for t in s["templates"].as_array().into_iter().flatten() {
                if t["scope_field_count"].as_u64().unwrap_or(0) > 0 {
                    options.insert(t["template_id"].as_u64());
                }
            }
            if options.contains(&s["set_id"].as_u64()) {
                continue;
            }
            for r in s["records"].as_array().into_iter().flatten() {
                records += 1;
                let mut delta_flows = None;
                for e in r.as_array().into_iter().flatten() {
                    let pen = e["pen"].as_u64().unwrap_or(0);
                    let v = e["value"].as_u64();
                    if e["kind"] != "uint" || !(pen == 0 || pen == 29305) {
                        continue;
                    }
                    match e["ie"].as_u64() {
                        Some(1) => octets += v.unwrap_or(0),
                        Some(2) => packets += v.unwrap_or(0),
                        Some(3) if pen == 0 => delta_flows = v,
                        _ => {}
                    }
                }
                flows += delta_flows.unwrap_or(1);
            }
        }
        // NetFlow v5: one record per flow, its octets and packets.
        for r in m["v5_records"].as_array().into_iter().flatten() {
            records += 1;
            flows += 1;
            for e in r.as_array().into_iter().flatten() {
                match e["field"].as_str() {
                    Some("cflow.octets") => octets += e["value"].as_u64().unwrap_or(0),
                    Some("cflow.packets") => packets += e["value"].as_u64().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    (records, flows, octets, packets)
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("timeseries")
        .args(args)
        .output()
        .expect("ipfixsvc timeseries");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        // Written to files (-o): nothing on standard output.
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("JSON on standard output")
}

fn sums(doc: &serde_json::Value) -> (u64, u64, u64) {
    let mut s = (0, 0, 0);
    for series in doc["series"].as_array().into_iter().flatten() {
        let total = |k: &str| -> u64 {
            series[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64())
                .sum()
        };
        s.0 += total("octets");
        s.1 += total("packets");
        s.2 += total("flows");
    }
    s
}

#[test]
fn series_add_up_to_what_tshark_decoded_on_every_testdata_capture() {
    let mut checked = 0;
    let mut with_records = 0;
    for entry in std::fs::read_dir(expected_dir()).expect("tests/expected") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let exp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let mut args: Vec<String> = exp["source"]
            .as_str()
            .expect("source")
            .split(" + ")
            .map(|s| testdata().join(s).display().to_string())
            .collect();
        for d in exp["decode_as"].as_array().into_iter().flatten() {
            if let Some(port) = d
                .as_str()
                .and_then(|s| s.strip_prefix("udp.port=="))
                .and_then(|s| s.split(',').next())
            {
                args.extend(["--port".into(), port.into()]);
            }
        }
        args.extend(
            [
                "--interval",
                "60",
                "--by",
                "destinationTransportPort",
                "--top",
                "3",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let doc = run(&args);
        let (records, flows, octets, packets) = tshark_totals(&exp);
        let t = &doc["totals"];
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let untimed = t["untimed"].as_u64().unwrap_or(0);
        // Every timed record is in the series, and the series add up to the totals.
        assert_eq!(
            sums(&doc),
            (
                t["octets"].as_u64().unwrap_or(0),
                t["packets"].as_u64().unwrap_or(0),
                t["flows"].as_u64().unwrap_or(0)
            ),
            "{name}: series vs totals"
        );
        // The totals are tshark's: every record with counters had a time (the untimed ones
        // of these captures carry no counters), and every record is a flow or untimed.
        assert_eq!(
            (t["octets"].as_u64(), t["packets"].as_u64()),
            (Some(octets), Some(packets)),
            "{name}: octets and packets vs tshark"
        );
        assert_eq!(
            t["flows"].as_u64().unwrap_or(0) + untimed,
            flows,
            "{name}: flows + untimed vs tshark's {records} records"
        );
        let n = doc["times"].as_array().map_or(0, Vec::len);
        assert!(
            doc["series"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|s| s["octets"].as_array().map(Vec::len) == Some(n)),
            "{name}: every series has one value per interval"
        );
        assert!(
            doc["series"].as_array().map_or(0, Vec::len) <= 4,
            "{name}: at most the top 3 and other"
        );
        checked += 1;
        with_records += usize::from(records > 0);
    }
    assert!(
        checked >= 40 && with_records >= 20,
        "{checked} captures, {with_records} with records"
    );
}

#[test]
fn series_of_conversion_results_add_up_to_what_was_metered() {
    let dir = common::config_dir("timeseries-convert");
    let mut converted = 0;
    for capture in common::traffic_captures() {
        let out = dir.join(format!(
            "{}.ipfix",
            capture.file_stem().unwrap_or_default().to_string_lossy()
        ));
        let c = Command::new(BIN)
            .arg("convert")
            .arg(&capture)
            .arg("-o")
            .arg(&out)
            .output()
            .expect("convert");
        assert!(c.status.success(), "{c:?}");
        let summary: serde_json::Value = String::from_utf8_lossy(&c.stderr)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("convert's summary");
        let csv = dir.join("series.csv");
        let json = dir.join("series.json");
        let _ = run(&[
            out.to_str().expect("path"),
            // A day: tls.pcap holds packets of 2015 and of 2023 (at 1 s, too many intervals).
            "--interval",
            "86400",
            "--by",
            "protocolIdentifier",
            "--top",
            "1",
            "-o",
            csv.to_str().expect("path"),
            "-o",
            json.to_str().expect("path"),
        ]);
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
        let t = &doc["totals"];
        assert_eq!(t["untimed"], 0, "{}", capture.display());
        // convert's `packets` also counts what it skipped (not IP): the flows hold the metered.
        for (ours, theirs) in [
            ("octets", "octets"),
            ("packets", "metered_packets"),
            ("flows", "flows"),
        ] {
            assert_eq!(t[ours], summary[theirs], "{}: {ours}", capture.display());
        }
        assert_eq!(
            sums(&doc),
            (
                t["octets"].as_u64().unwrap_or(0),
                t["packets"].as_u64().unwrap_or(0),
                t["flows"].as_u64().unwrap_or(0)
            ),
            "{}",
            capture.display()
        );
        // The CSV holds the same numbers: one row per interval and series.
        let text = std::fs::read_to_string(&csv).expect("csv");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("time,key,octets,packets,flows"));
        let mut csv_octets = 0;
        let mut rows = 0;
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{l}");
            csv_octets += f[2].parse::<u64>().expect("octets");
            rows += 1;
        }
        assert_eq!(csv_octets, t["octets"].as_u64().unwrap_or(0));
        assert_eq!(
            rows,
            doc["times"].as_array().map_or(0, Vec::len)
                * doc["series"].as_array().map_or(0, Vec::len)
        );
        converted += 1;
    }
    assert!(converted >= 8, "{converted}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let file = testdata().join("ipfix/example_flows.ipfix");
    let file = file.to_str().expect("path");
    for (args, says) in [
        (vec![file, "--interval", "0"], "interval"),
        (vec![file, "--interval", "86401"], "interval"),
        (vec![file, "--by", "noSuchElement"], "noSuchElement"),
        (vec![file, "--by", "protocolIdentifier/8"], "prefix"),
        (vec![file, "-o", "/tmp/x.txt"], ".svg or .png"),
        (vec![file, "--size", "10x10"], "100 to 8000"),
        (vec!["/nonexistent.ipfix"], "cannot open"),
    ] {
        let out = Command::new(BIN)
            .arg("timeseries")
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Checks a PNG as a decoder would: the signature, the header's size, every chunk's CRC, and
/// the image data inflating to exactly one filter byte plus a row of pixels per row (Python's
/// zlib and binascii, independent of the encoder that wrote it). Prints "WIDTH HEIGHT".
const PNG_CHECK: &str = r#"
import sys, zlib, struct, binascii
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n', 'signature'
pos, idat, ihdr = 8, b'', None
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    crc = struct.unpack('>I', data[pos + 8 + n:pos + 12 + n])[0]
    assert binascii.crc32(kind + body) & 0xffffffff == crc, kind
    if kind == b'IHDR': ihdr = struct.unpack('>IIBBBBB', body)
    if kind == b'IDAT': idat += body
    pos += 12 + n
w, h, depth, color = ihdr[:4]
channels = {2: 3, 6: 4}[color]
assert depth == 8
assert len(zlib.decompress(idat)) == h * (1 + w * channels), 'pixel data'
print(w, h)
"#;

#[test]
fn charts_are_valid_svg_and_png_with_the_series_names() {
    common::need("python3");
    let dir = common::config_dir("timeseries-charts");
    let (svg, png) = (dir.join("ports.svg"), dir.join("ports.png"));
    let file = testdata().join("ipfix/example_flows.ipfix");
    let args = [
        file.to_str().expect("path"),
        "--interval",
        "10",
        "--by",
        "destinationTransportPort",
        "--top",
        "4",
    ];
    let outputs = [
        "-o",
        svg.to_str().expect("path"),
        "-o",
        png.to_str().expect("path"),
    ];
    let _ = run(&[&args[..], &outputs[..]].concat());
    // The same series as JSON, for the names the charts must carry.
    let doc = run(&args);
    let keys: Vec<String> = doc["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| s["key"].as_str().expect("key").to_string())
        .collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    // The SVG parses as XML, and its text has the title, the axes' units and every series.
    let texts = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E\n\
             root = E.parse(sys.argv[1]).getroot()\n\
             print(root.get('width'), root.get('height'))\n\
             for t in root.iter('{http://www.w3.org/2000/svg}text'): print(''.join(t.itertext()))",
            svg.to_str().expect("path"),
        ])
        .output()
        .expect("python3");
    assert!(texts.status.success(), "{texts:?}");
    let texts = String::from_utf8_lossy(&texts.stdout);
    let mut lines = texts.lines();
    assert_eq!(lines.next(), Some("1200 600"));
    let texts: Vec<&str> = lines.collect();
    for k in &keys {
        assert!(
            texts.contains(&k.as_str()),
            "{k} not in the legend: {texts:?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t.contains("bits/s by destinationTransportPort"))
    );
    assert!(texts.contains(&"time (UTC)"), "{texts:?}");
    // The PNG decodes, at 1200 x 600.
    let png_check = Command::new("python3")
        .args(["-c", PNG_CHECK, png.to_str().expect("path")])
        .output()
        .expect("python3");
    assert!(png_check.status.success(), "{png_check:?}");
    assert_eq!(
        String::from_utf8_lossy(&png_check.stdout).trim(),
        "1200 600"
    );
}
