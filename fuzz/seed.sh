#!/usr/bin/env bash
# Recreates the seed corpora (gitignored) of the fuzz targets from the shared test data:
#   fuzz/corpus/{decode_messages,framer_chunks,file_reader,capture,meter,session,filter}/
# Usage: fuzz/seed.sh [TESTDATA_DIR]   (default: ../shared/testdata/ipfix beside the repo)
# Idempotent: seeds are named by content hash; files that libFuzzer added are left alone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${1:-$here/../../shared/testdata/ipfix}"
[ -f "$data/example_flows.ipfix" ] || { echo "no test data at $data" >&2; exit 1; }
exec python3 - "$here/corpus" "$data" <<'PY'
import hashlib, os, struct, sys

corpus, data = sys.argv[1], sys.argv[2]
MAX = 4096  # keep seeds small: libFuzzer is fastest on small inputs

def put(target, blob, limit=MAX):
    if not blob or len(blob) > limit:
        return 0
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + hashlib.sha1(blob).hexdigest()), "wb") as f:
        f.write(blob)
    return 1

# --- IPFIX messages of an RFC 5655 file -------------------------------------------------------
def messages(b):
    out, i = [], 0
    while i + 16 <= len(b):
        n = struct.unpack(">H", b[i + 2:i + 4])[0]
        if n < 16 or i + n > len(b):
            break
        out.append(b[i:i + n]); i += n
    return out

def sets(m):
    out, j = [], 16
    while j + 4 <= len(m):
        sid, n = struct.unpack(">HH", m[j:j + 4])
        if n < 4 or j + n > len(m):
            break
        out.append((sid, m[j:j + n])); j += n
    return out

def rebuild(header, set_blobs):
    body = b"".join(set_blobs)
    return header[:2] + struct.pack(">H", 16 + len(body)) + header[4:16] + body

streams = []  # IPFIX byte streams: seeds for decode_messages, file_reader, framer_chunks
msgs = messages(open(os.path.join(data, "example_flows.ipfix"), "rb").read())
# The file's only Template Set is in its first message; a template-only message made from it
# goes in front of later data messages so that seeds decode records, not just "missing template".
tmpl = [rebuild(m[:16], [s for sid, s in sets(m) if sid in (2, 3)]) for m in msgs]
tmpl = [t for t in tmpl if len(t) > 16]
tmsg = tmpl[0] if tmpl else b""
for k, m in enumerate(msgs):
    if k == 0:
        streams.append(m)  # templates and data in one message
        continue
    chunk, j = tmsg + m, k + 1
    while j < len(msgs) and len(chunk) + len(msgs[j]) <= MAX:  # "a few messages" where they fit
        chunk += msgs[j]; j += 1
    if len(chunk) > MAX:  # a big data message: keep only its first data set or two
        ds = sets(m)
        while ds and len(tmsg) + len(rebuild(m[:16], [s for _, s in ds])) > MAX:
            ds.pop()
        chunk = tmsg + rebuild(m[:16], [s for _, s in ds])
    streams.append(chunk)

# --- UDP payloads of the captures -------------------------------------------------------------
def pcap_records(b):
    if len(b) < 24:
        return None, []
    magic = b[:4]
    e = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    link = struct.unpack(e + "I", b[20:24])[0]
    out, i = [], 24
    while i + 16 <= len(b):
        ts, tu, incl, orig = struct.unpack(e + "IIII", b[i:i + 16])
        out.append((ts, tu, orig, b[i + 16:i + 16 + incl])); i += 16 + incl
    return link, out

def udp_payload(frame, link):
    if link != 1:
        return None
    et, i = struct.unpack(">H", frame[12:14])[0], 14
    while et in (0x8100, 0x88A8) and i + 4 <= len(frame):
        et, i = struct.unpack(">H", frame[i + 2:i + 4])[0], i + 4
    if et in (0x8847, 0x8848):
        while i + 4 <= len(frame):
            bos = frame[i + 2] & 1; i += 4
            if bos:
                break
        et = 0x0800 if i < len(frame) and frame[i] >> 4 == 4 else 0x86DD
    if et == 0x0800 and i + 20 <= len(frame):
        ihl, proto = (frame[i] & 15) * 4, frame[i + 9]
        i += ihl
    elif et == 0x86DD and i + 40 <= len(frame):
        proto = frame[i + 6]; i += 40
    else:
        return None
    if proto != 17 or i + 8 > len(frame):
        return None
    ulen = struct.unpack(">H", frame[i + 4:i + 6])[0]
    return frame[i + 8:i + max(ulen, 8)]

def payloads(path):
    link, recs = pcap_records(open(path, "rb").read())
    return [p for p in (udp_payload(r[3], link) for r in recs) if p and len(p) >= 16]

datagrams = []  # single datagrams (NetFlow v9 and IPFIX), for decode_messages
pcaps = []
for root in (data, os.path.join(data, "akvorado")):
    pcaps += sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".pcap"))
per_capture = []  # the first datagrams of each capture, for session
for p in pcaps:
    per_capture.append(payloads(p)[:20])
    datagrams += per_capture[-1]  # the first datagrams hold the templates; the rest repeat
# Template and data captures of the same exporter: one stream / one packet with both.
akv = os.path.join(data, "akvorado")
pairs = []
for f in sorted(os.listdir(akv)):
    for suffix in ("-template.pcap", "-templates.pcap"):
        if f.endswith(suffix):
            d = os.path.join(akv, f[: -len(suffix)] + "-data.pcap")
            if os.path.exists(d):
                pairs.append((os.path.join(akv, f), d))
for t, d in pairs:
    tp, dp = payloads(t), payloads(d)
    if tp and dp and tp[0][:2] == b"\x00\x0a":
        streams.append(b"".join(tp + dp))
    elif tp and dp and tp[0][:2] == b"\x00\x09":
        datagrams.append(tp[0] + b"".join(x[20:] for x in dp))  # v9: flowsets of both

# --- NetFlow v5 packets: 24-byte header (version 5, count), then count 48-byte records ----------
def v5(count, seq, engine=(1, 2), uptime=3_600_000):
    out = struct.pack(">HHIIIIBBH", 5, count, uptime, 1_700_000_000, 5000, seq, engine[0], engine[1], 0)
    for k in range(count):
        out += struct.pack(">IIIHHIIIIHHBBBBHHBBH",
                           0x0A000001 + k, 0xC0A80001 + 3 * k, 0x0A0000FE, 1 + k % 3, 2,
                           10 + k, 1500 * (10 + k), uptime - 20_000 + k, uptime - 1000 + k,
                           1024 + k, (80, 443, 53)[k % 3], 0, 0x1B, (6, 6, 17)[k % 3], 0,
                           64512, 65000 + k, 24, 16, 0)
    return out
v5_packets = [v5(1, 0), v5(3, 1), v5(30, 4, (0, 7))]

n = {"decode_messages": 0, "file_reader": 0, "framer_chunks": 0, "capture": 0}
for pkt in v5_packets:
    n["decode_messages"] += put("decode_messages", pkt)
for s in streams:
    n["decode_messages"] += put("decode_messages", s)
    n["file_reader"] += put("file_reader", s)
for i, s in enumerate(streams[:24]):
    for size in (1, 7, 63):  # first byte: chunk size - 1
        n["framer_chunks"] += put("framer_chunks", bytes([size]) + s, MAX + 1)
for g in datagrams:
    n["decode_messages"] += put("decode_messages", g)

# --- session: 4 config bytes, then operations (fuzz_targets/session.rs) -------------------------
MSG, LEARN, EXPIRE = 0, 6, 7
def op(kind, step, payload=None):
    """One operation: the clock advances (step^2 x 100 ms) first."""
    o = bytes([kind | step << 3])
    return o if payload is None else o + struct.pack(">H", len(payload)) + payload

def session(config, ops):
    return bytes(config) + b"".join(ops)

# config byte 0: bit 0 UDP, bits 1-2 pending age (1, 5, 30, 120 s), bits 3-4 UDP template
# lifetime (2, 10, 60, 300 s); bytes 1-3: other parties' shares of the budgets.
UDP_SHORT, UDP_LONG, TCP = [1 | 1 << 1 | 1 << 3, 0, 0, 0], [1 | 2 << 1 | 2 << 3, 0, 0, 0], [0, 0, 0, 0]
TIGHT = [1 | 1 << 1 | 1 << 3, 150, 200, 150]  # others hold most of every budget
n["session"] = 0
def put_session(config, ops):
    n["session"] += put("session", session(config, ops), MAX + 256)

for k, s in enumerate(streams):
    ms = messages(s)
    if not ms:
        continue
    config = (UDP_SHORT, TCP, UDP_LONG, TIGHT)[k % 4]
    put_session(config, [op(MSG, 1, m) for m in ms])
    if len(ms) > 1:  # data before its template (held, then released), then expiry
        put_session(config, [op(MSG, 2, m) for m in ms[1:]] + [op(MSG, 3, ms[0]), op(EXPIRE, 31)]
                    + [op(MSG, 20, ms[-1]), op(EXPIRE, 31)])
        # the template from the shared store instead of the exporter
        put_session(config, [op(MSG, 1, m) for m in ms[1:]] + [op(LEARN, 4, ms[0])]
                    + [op(MSG, 25, ms[-1]), op(EXPIRE, 12)])
for pl in per_capture:  # NetFlow v9 and IPFIX datagrams of one exporter, in order and reversed
    for config, order in ((UDP_SHORT, pl), (UDP_LONG, pl[::-1])):
        ops = []
        for g in order:
            if sum(map(len, ops)) + len(g) + 3 > MAX:
                break
            ops.append(op(MSG, 2, g))
        if ops:
            put_session(config, ops + [op(EXPIRE, 31)])
for t, d in pairs:
    tp, dp = payloads(t), payloads(d)
    if tp and dp:
        put_session(UDP_SHORT, [op(MSG, 1, x) for x in dp[:3]] + [op(MSG, 1, tp[0]), op(EXPIRE, 5)])
        put_session(TCP, [op(LEARN, 0, tp[0])] + [op(MSG, 1, x) for x in dp[:3]])
# NetFlow v5: in order, a gap (lost flows), a restart
put_session(UDP_SHORT, [op(MSG, 1, v5(2, 0)), op(MSG, 1, v5(3, 2)), op(MSG, 3, v5(1, 10)),
                        op(MSG, 1, v5(1, 0, (1, 2))), op(EXPIRE, 31)])
put_session(TCP, [op(MSG, 0, v5(30, 7, (0, 7))), op(MSG, 0, v5(1, 37, (0, 8)))])

# --- captures ---------------------------------------------------------------------------------
def pcapng(path):
    """The same frames as a pcapng file (SHB, one IDB, EPBs), for the pcapng reader."""
    link, recs = pcap_records(open(path, "rb").read())
    def block(t, body):
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", t, n) + body + struct.pack("<I", n)
    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", link, 0, 65535))
    for ts, tu, orig, frame in recs:
        t = ts * 1_000_000 + tu
        out += block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(frame), orig) + frame)
    return out

def merged(a, b):
    """Two classic pcaps of one link type as one file."""
    x, y = open(a, "rb").read(), open(b, "rb").read()
    return x + y[24:] if x[:4] == y[:4] and x[20:24] == y[20:24] else None

CAP = 16384
for p in pcaps:
    n["capture"] += put("capture", open(p, "rb").read(), CAP)
for t, d in pairs:
    m = merged(t, d)
    if m:
        n["capture"] += put("capture", m, CAP)
for p in ("cisco-ipfix.pcap", "mixed-sources-ipfix-nfv9.pcap", os.path.join("akvorado", "data+templates.pcap")):
    n["capture"] += put("capture", pcapng(os.path.join(data, p)), CAP)
# --- the Metering Process: traffic captures, cut to their first frames --------------------------
n["meter"] = 0
traffic = os.path.join(os.path.dirname(data), "traffic")
for f in sorted(os.listdir(traffic)) if os.path.isdir(traffic) else []:
    whole = open(os.path.join(traffic, f), "rb").read()
    if whole[:4] == b"\x0a\x0d\x0d\x0a":  # pcapng (little-endian here): whole blocks up to CAP
        out, i = b"", 0
        while i + 8 <= len(whole):
            size = struct.unpack("<I", whole[i + 4:i + 8])[0]
            if size < 12 or len(out) + size > CAP:
                break
            out += whole[i:i + size]; i += size
        n["meter"] += put("meter", out, CAP)
        continue
    link, recs = pcap_records(whole)
    if link is None:
        continue
    e = "<" if whole[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out = whole[:24]
    for ts, tu, orig, frame in recs:
        rec = struct.pack(e + "IIII", ts, tu, len(frame), orig) + frame
        if len(out) + len(rec) > CAP:
            break
        out += rec
    n["meter"] += put("meter", out, CAP)

# --- filter: a length byte, the filter text, then records of the target's fixed template ------
# (sourceIPv4Address, destinationTransportPort, protocolIdentifier, octetDeltaCount/4,
# sourceIPv6Address, flowStartMilliseconds, applicationName varlen, sourceIPv4Address)
def filter_record(k):
    app = [b"", b"dns", b"http"][k % 3]
    return (bytes([10, 0, 0, k % 4]) + struct.pack(">HBI", [80, 443, 22][k % 3], [6, 17, 1][k % 3], k * 100)
            + bytes(16 - 1) + bytes([k]) + struct.pack(">Q", 1704067200000 + k * 1000)
            + bytes([len(app)]) + app + bytes([10, 0, 1, k % 4]))
body = b"".join(filter_record(k) for k in range(70))
n["filter"] = 0
for text in [
    "protocolIdentifier == 6 and destinationTransportPort in (80, 443) and not sourceIPv4Address in 10.0.0.0/8",
    "octetDeltaCount >= 0x100 or (applicationName == \"dns\" and sourceIPv6Address in ::/120)",
    "flowStartMilliseconds < \"2024-01-01T00:00:30Z\" and @domain != 2 or @exporter in 192.0.2.0/24",
    "not not (sourceIPv4Address > 10.0.0.1 and destinationIPv4Address == 10.0.0.1) or octetDeltaCount < 1.5e3",
]:
    t = text.encode()
    n["filter"] += put("filter", bytes([len(t)]) + t + body, MAX + 1024)
print("seeds written:", ", ".join(f"{k} {v}" for k, v in n.items()), "->", corpus)
PY
