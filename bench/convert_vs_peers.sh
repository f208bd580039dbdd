#!/usr/bin/env bash
# Times `ipfixsvc convert` against three independent flow meters reading the same packet capture:
# softflowd -r, nfpcapd -r and pmacctd (nfprobe plugin, pcap_savefile). Checks each meter's
# totals against the capture's truth file and prints the ratios.
#
#   bench/convert_vs_peers.sh          # from anywhere; results also in bench/out/convert-peers.tsv
#   RUNS=5 PACKETS=1000000 bench/convert_vs_peers.sh
#
# Env:
#   RUNS      rounds (default 3); every round runs every meter once, interleaved (each round
#             starting one meter later), medians reported
#   PACKETS   capture size given to gen_pcap.py --packets (default 3000000)
#   GEN       path of gen_pcap.py (default ../shared/bench/gen_pcap.py next to this repository)
#   IPFIXSVC  use this ipfixsvc binary and skip `cargo build --release` (default: build, then
#             target/release/ipfixsvc)
#   INSTALL=1 apt-get install the missing Debian packages (softflowd, nfdump, pmacct); without it a
#             missing peer is skipped with a line saying so
#   CAPTURE   capture path (default bench/out/big.pcap), generated there with PACKETS if needed
#   PM_BUFFER pmacctd plugin_buffer_size in bytes (default 1024000, plugin_pipe_size 250x that);
#             0 = pmacct's defaults (about 10x slower here and it then loses packets)
#
# Capture: bench/out/big.pcap (+ .truth.json) from gen_pcap.py; regenerated only when missing or made
# with other parameters (recorded in bench/out/big.pcap.gen). A capture without that record is
# adopted when its truth file and size match the parameters (seed 1, 50 s span, PACKETS planned).
# bench/out is gitignored; the work files of the last run are in bench/out/convert-peers/.
#
# Meters (all read the file directly; exporters send to a sink on 127.0.0.1 that writes what it
# receives to a file, decoded afterwards by bench/out/convert-peers/ipfix_totals.py, not by ipfixsvc):
#   ipfixsvc --uniflow  convert IN -o OUT --uniflow --quiet (one flow per direction, like the peers)
#   ipfixsvc biflow     convert IN -o OUT --quiet (RFC 5103 biflows, the default)
#   softflowd           -d -r IN -v 10 -P tcp -A milli -m 2000000 -n 127.0.0.1:PORT; it expires
#                       every flow at end of file and exits; IPFIX over TCP to the sink
#   nfpcapd             -r IN -w DIR; totals summed from `nfdump -R DIR` records
#   pmacctd             pcap_savefile + nfprobe (IPFIX, nfprobe_maxflows 2000000) over UDP to the
#                       sink; it sleeps 2 s before reading a file, by design, and that is counted
# Timing: wall clock of the meter's whole process (all its children included) from start to exit,
# measured outside it; reading back and checking the output is not timed. The capture is read once
# beforehand so every meter finds it in the page cache.
#
# Columns:
#   meter          as above
#   packets        packets in the meter's exported flows (median over runs)
#   wall s         median wall seconds
#   pkt/s          capture packets / median wall seconds
#   cpu s          median user+sys CPU seconds of the process and its children
#   pkt/cpu-s      capture packets / median CPU seconds (throughput per core)
#   totals         packets, octets (IP bytes, truth "bytes") and flows of the exported records vs
#                  the truth: "exact" or the differences; a biflow is compared with truth
#                  "connections" (see the notes printed under the table)
#   ipfixsvc/peer  peer median wall / `ipfixsvc --uniflow` median wall (>1: ipfixsvc faster)
# Targets checked at the end: ipfixsvc --uniflow at least 3x softflowd in the same round, at least
# 5M packets per CPU-second, totals exactly the capture's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=bench/out
W=$OUT/convert-peers
RUNS=${RUNS:-3}
PACKETS=${PACKETS:-3000000}
GEN=${GEN:-$ROOT/../shared/bench/gen_pcap.py}
PM_BUFFER=${PM_BUFFER:-1024000}
CAP=${CAPTURE:-$OUT/big.pcap}
TRUTH=$CAP.truth.json
RES=$OUT/convert-peers.tsv
JSONL=$W/runs.jsonl
mkdir -p "$OUT"
rm -rf "$W"
mkdir -p "$W"
CAP_ABS=$(realpath -m "$CAP")

# ---- cleanup: only what this script started ------------------------------------------------------
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- ipfixsvc ------------------------------------------------------------------------------------
if [[ -n ${IPFIXSVC:-} ]]; then
    echo "== using $IPFIXSVC (IPFIXSVC set: not building)" >&2
else
    echo "== building ipfixsvc (release)" >&2
    cargo build --release --quiet
    IPFIXSVC=$ROOT/target/release/ipfixsvc
fi

# ---- peers ---------------------------------------------------------------------------------------
declare -A PKG=([softflowd]=softflowd [nfpcapd]=nfdump [nfdump]=nfdump [pmacctd]=pmacct)
missing_pkgs() {
    local c
    for c in softflowd nfpcapd nfdump pmacctd; do
        command -v "$c" >/dev/null 2>&1 || [[ -x /usr/sbin/$c ]] || echo "${PKG[$c]}"
    done | sort -u
}
if [[ ${INSTALL:-0} == 1 ]]; then
    mapfile -t want < <(missing_pkgs)
    if ((${#want[@]})); then
        echo "== apt-get install ${want[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >&2
    fi
fi
export PATH=$PATH:/usr/sbin
METERS=(ipfixsvc-uniflow ipfixsvc-biflow)
SKIPPED=()
have() { command -v "$1" >/dev/null 2>&1; }
if have softflowd; then METERS+=(softflowd); else SKIPPED+=("softflowd: not installed (Debian package softflowd; INSTALL=1 installs it)"); fi
if have nfpcapd && have nfdump; then METERS+=(nfpcapd); else SKIPPED+=("nfpcapd: not installed (Debian package nfdump; INSTALL=1 installs it)"); fi
if have pmacctd; then METERS+=(pmacctd); else SKIPPED+=("pmacctd: not installed (Debian package pmacct; INSTALL=1 installs it)"); fi
for s in "${SKIPPED[@]}"; do echo "== skipping $s" >&2; done

# ---- capture -------------------------------------------------------------------------------------
want="packets=$PACKETS gen=$(sha256sum "$GEN" | cut -c1-16)"
if [[ -f $CAP && -f $TRUTH && -f $CAP.gen && "$(head -n1 "$CAP.gen")" == "$want" ]]; then
    echo "== reusing $CAP" >&2
elif [[ -f $CAP && -f $TRUTH && ! -f $CAP.gen ]] && python3 - "$CAP" "$TRUTH" "$PACKETS" <<'EOF'
import json, os, sys
cap, truth, planned = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
ok = (truth.get("seed") == 1 and truth.get("span_s") == 50.0 and truth.get("first_ts") == 1735689600
      and planned <= truth["packets"] < planned * 1.01
      and os.path.getsize(cap) == 24 + 16 * truth["packets"] + truth["frame_bytes"])
sys.exit(0 if ok else 1)
EOF
then
    echo "== adopting existing $CAP (truth file and size match $want)" >&2
    printf '%s\n%s\n' "$want" "adopted $(date -u +%FT%TZ): $(python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print(" ".join(f"{k}={t[k]}" for k in ("packets","flows","connections","bytes","frame_bytes")))' "$TRUTH")" > "$CAP.gen"
else
    echo "== generating $CAP ($want)" >&2
    summary=$(python3 "$GEN" --out "$CAP" --packets "$PACKETS")
    printf '%s\n%s\n' "$want" "$summary" > "$CAP.gen"
fi

# ---- helpers -------------------------------------------------------------------------------------
# timed.py RESULT CMD...: runs CMD (stdout/stderr to RESULT.out/.err), writes "rc wall_s cpu_s".
cat > "$W/timed.py" <<'EOF'
import os, subprocess, sys, time
res = sys.argv[1]
with open(res + ".out", "wb") as o, open(res + ".err", "wb") as e:
    t0 = time.perf_counter()
    p = subprocess.Popen(sys.argv[2:], stdout=o, stderr=e)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
with open(res, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {wall:.6f} {ru.ru_utime + ru.ru_stime:.6f}\n")
EOF

# sink.py tcp|udp PORTFILE OUTFILE: binds 127.0.0.1 on a free port, writes the port to PORTFILE,
# then writes what it receives to OUTFILE. TCP: one connection, ends at its EOF. UDP: ends on
# SIGTERM after the socket has been quiet for 0.2 s; writes the kernel's drop count to OUTFILE.drops.
cat > "$W/sink.py" <<'EOF'
import os, signal, socket, sys
proto, portfile, out = sys.argv[1:4]
stop = False
def on_term(*_):
    global stop
    stop = True
if proto == "udp":  # TCP: SIGTERM keeps its default action (a handler would not interrupt accept)
    signal.signal(signal.SIGTERM, on_term)
f = open(out, "wb")
if proto == "tcp":
    s = socket.socket()
    s.bind(("127.0.0.1", 0)); s.listen(1)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind(("127.0.0.1", 0)); s.settimeout(0.2)
port = s.getsockname()[1]
with open(portfile + ".tmp", "w") as pf:
    pf.write(f"{port}\n")
os.rename(portfile + ".tmp", portfile)
if proto == "tcp":
    c, _ = s.accept()
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        f.write(b)
else:
    while True:
        try:
            f.write(s.recv(65535))
        except socket.timeout:
            if stop:
                break
    drops = 0
    for line in open("/proc/net/udp").readlines()[1:]:
        x = line.split()
        if x[1] == f"0100007F:{port:04X}":
            drops = int(x[-1])
    open(out + ".drops", "w").write(f"{drops}\n")
f.close()
EOF

# ipfix_totals.py FILE: IPFIX messages back to back (RFC 5655 file, TCP stream or UDP payloads) ->
# JSON {flows, packets, octets, by_proto, messages, missing_template_sets}. Data records only
# (options records are not flows); forward + RFC 5103 reverse counters. Independent of ipfixsvc.
cat > "$W/ipfix_totals.py" <<'EOF'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
HDR, SET, TF, U32 = struct.Struct("!HHIII"), struct.Struct("!HH"), struct.Struct("!HH"), struct.Struct("!I")
WANT = {(1, 0): "o", (2, 0): "p", (4, 0): "proto", (1, 29305): "o", (2, 29305): "p"}
templates = {}
tot = {"flows": 0, "packets": 0, "octets": 0, "messages": 0, "missing_template_sets": 0,
       "seq_gap_records": 0, "seq_gaps": 0}
by = {}
next_seq, n_data = {}, 0  # per domain: sequence number expected next (RFC 7011: data records sent)
def parse_fields(buf, q, n):
    fields = []
    for _ in range(n):
        ie, ln = TF.unpack_from(buf, q); q += 4
        pen = 0
        if ie & 0x8000:
            pen, = U32.unpack_from(buf, q); q += 4
            ie &= 0x7FFF
        fields.append((ie, pen, ln))
    return fields, q
def compile_t(fields, options):
    if options or any(ln == 0xFFFF for _, _, ln in fields):
        return ("slow", fields, options)
    off, picks = 0, []
    for ie, pen, ln in fields:
        if (ie, pen) in WANT:
            picks.append((WANT[(ie, pen)], off, ln))
        off += ln
    return ("fixed", off, picks, options)
def add(proto, p, o):
    tot["flows"] += 1; tot["packets"] += p; tot["octets"] += o
    b = by.setdefault(str(proto), [0, 0, 0]); b[0] += 1; b[1] += p; b[2] += o
pos = 0
while pos + 16 <= len(data):
    ver, mlen, _, seq, dom = HDR.unpack_from(data, pos)
    if ver != 10 or mlen < 16 or pos + mlen > len(data):
        raise SystemExit(f"bad IPFIX message header at offset {pos}")
    end, p = pos + mlen, pos + 16
    tot["messages"] += 1
    if dom in next_seq and seq != next_seq[dom]:
        tot["seq_gaps"] += 1
        tot["seq_gap_records"] += (seq - next_seq[dom]) % (1 << 32)
    n_data = 0
    while p + 4 <= end:
        sid, slen = SET.unpack_from(data, p)
        if slen < 4:
            raise SystemExit(f"bad set length at offset {p}")
        q, send = p + 4, p + slen
        if sid in (2, 3):
            while q + 4 <= send:
                tid, n = TF.unpack_from(data, q); q += 4
                if sid == 3:
                    _scope, = struct.unpack_from("!H", data, q); q += 2
                if n == 0:
                    templates.pop((dom, tid), None); continue
                fields, q = parse_fields(data, q, n)
                templates[(dom, tid)] = compile_t(fields, sid == 3)
        elif sid >= 256:
            t = templates.get((dom, sid))
            if t is None:
                tot["missing_template_sets"] += 1
            elif t[0] == "fixed":
                _, rlen, picks, options = t
                if rlen:
                    n_data += (send - q) // rlen
                if not options and rlen:
                    while q + rlen <= send:
                        v = {"p": 0, "o": 0, "proto": None}
                        for k, o, ln in picks:
                            x = int.from_bytes(data[q + o:q + o + ln], "big")
                            v[k] = x if k == "proto" else v[k] + x
                        add(v["proto"], v["p"], v["o"]); q += rlen
            else:
                fields, options = t[1], t[2]
                while q < send:
                    v = {"p": 0, "o": 0, "proto": None}
                    start = q
                    for ie, pen, ln in fields:
                        if ln == 0xFFFF:
                            ln = data[q]; q += 1
                            if ln == 255:
                                ln, = struct.unpack_from("!H", data, q); q += 2
                        k = WANT.get((ie, pen))
                        if k:
                            x = int.from_bytes(data[q:q + ln], "big")
                            v[k] = x if k == "proto" else v[k] + x
                        q += ln
                    if q > send:
                        break
                    n_data += 1
                    if not options:
                        add(v["proto"], v["p"], v["o"])
                    if send - q < 4:
                        break
        p = send
    next_seq[dom] = (seq + n_data) % (1 << 32)
    pos = end
if pos != len(data):
    tot["trailing_bytes"] = len(data) - pos
tot["by_proto"] = by
print(json.dumps(tot))
EOF

wait_file() { # wait_file FILE PID: until FILE exists (5 s at most) or PID has exited
    local i
    for i in $(seq 1 100); do
        [[ -s $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# record METER RUN TIMEFILE TOTALS_JSON EXTRA_JSON -> one TSV row + one JSONL line
record() {
    local meter=$1 run=$2 tf=$3 totals=$4 extra=$5 rc wall cpu
    read -r rc wall cpu < "$tf"
    python3 - "$meter" "$run" "$rc" "$wall" "$cpu" "$totals" "$extra" "$TRUTH" "$RES" "$JSONL" <<'EOF'
import json, sys
meter, run, rc, wall, cpu, totals, extra, truth_f, res, jsonl = sys.argv[1:]
t, x, truth = json.loads(totals), json.loads(extra), json.load(open(truth_f))
biflow = meter == "ipfixsvc-biflow"
exp_flows = truth["connections"] if biflow else truth["flows"]
row = [meter, run, rc, wall, cpu, t.get("packets", ""), t.get("octets", ""), t.get("flows", ""),
       truth["packets"], truth["bytes"], exp_flows]
open(res, "a").write("\t".join(map(str, row)) + "\n")
x.update(meter=meter, run=int(run), rc=int(rc), wall_s=float(wall), cpu_s=float(cpu), totals=t)
open(jsonl, "a").write(json.dumps(x) + "\n")
EOF
}

# ---- one run of each meter -----------------------------------------------------------------------
run_ipfixsvc() { # run_ipfixsvc METER RUN [--uniflow]
    local meter=$1 run=$2 f=$W/$1.ipfix
    rm -f "$f"
    python3 "$W/timed.py" "$W/$meter.time" "$IPFIXSVC" convert "$CAP" -o "$f" "${@:3}" --quiet
    local summary count totals
    summary=$(tail -n1 "$W/$meter.time.err" | python3 -c 'import json, sys; print(json.dumps(json.loads(sys.stdin.read())))' 2>/dev/null || echo '{}')
    count=$("$IPFIXSVC" dump --count "$f" 2>/dev/null || echo '{}')
    totals=$(python3 "$W/ipfix_totals.py" "$f")
    record "$meter" "$run" "$W/$meter.time" "$totals" \
        "{\"summary\": $summary, \"dump_count\": $count}"
}

run_softflowd() {
    local run=$1 f=$W/softflowd.ipfix port
    rm -f "$f" "$W/sf.port"
    python3 "$W/sink.py" tcp "$W/sf.port" "$f" & local sp=$!
    PIDS+=("$sp")
    wait_file "$W/sf.port" "$sp" || { echo "softflowd: sink did not start" >&2; return 1; }
    port=$(cat "$W/sf.port")
    # /tmp/sf.ctl: softflowd -r can hang at end of file with 13-17 character control socket paths.
    python3 "$W/timed.py" "$W/softflowd.time" timeout 300 softflowd -d -r "$CAP_ABS" -v 10 -P tcp \
        -A milli -m 2000000 -n "127.0.0.1:$port" -p "$ROOT/$W/sf.pid" -c /tmp/sf.ctl
    # softflowd closed the connection when it exited; the sink ends at EOF.
    timeout 30 tail --pid="$sp" -f /dev/null || kill "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    local totals stats
    totals=$(python3 "$W/ipfix_totals.py" "$f")
    stats=$(python3 - "$W/softflowd.time.out" <<'EOF'
import json, re, sys
s = open(sys.argv[1]).read()
g = lambda pat: int(m.group(1)) if (m := re.search(pat, s)) else None
print(json.dumps({"own": {"packets_processed": g(r"Packets processed: (\d+)"),
    "flows_expired": g(r"Flows expired: (\d+)"), "records_exported": g(r"Flows exported: \d+ \((\d+) records\)"),
    "export_failures": g(r"\((\d+) failures\)"), "expired_maxflows": g(r"maxflows =\s+(\d+)"),
    "expired_flushed": g(r"flushed =\s+(\d+)")}}))
EOF
)
    record softflowd "$run" "$W/softflowd.time" "$totals" "$stats"
}

run_nfpcapd() {
    local run=$1 d=$W/nfpcapd
    rm -rf "$d"; mkdir -p "$d"
    python3 "$W/timed.py" "$W/nfpcapd.time" timeout 300 nfpcapd -r "$CAP_ABS" -w "$d"
    local totals own
    totals=$(nfdump -R "$d" -q -N -o 'fmt:%pr %pkt %byt' | python3 -c '
import json, sys
t = {"flows": 0, "packets": 0, "octets": 0, "by_proto": {}}
for line in sys.stdin:
    pr, p, o = line.split()
    p, o = int(p), int(o)
    t["flows"] += 1; t["packets"] += p; t["octets"] += o
    b = t["by_proto"].setdefault({"ICMP": "1", "TCP": "6", "UDP": "17", "ICMP6": "58"}.get(pr, pr), [0, 0, 0])
    b[0] += 1; b[1] += p; b[2] += o
print(json.dumps(t))')
    own=$(grep -m1 -o "Flows: [0-9]*, Packets: [0-9]*, Bytes: [0-9]*" "$W/nfpcapd.time.out" "$W/nfpcapd.time.err" 2>/dev/null | head -n1 | sed 's/^[^:]*:Flows/Flows/' || true)
    record nfpcapd "$run" "$W/nfpcapd.time" "$totals" "{\"own\": \"${own}\"}"
}

run_pmacctd() {
    local run=$1 f=$W/pmacctd.ipfix port
    rm -f "$f" "$f.drops" "$W/pm.port"
    python3 "$W/sink.py" udp "$W/pm.port" "$f" & local sp=$!
    PIDS+=("$sp")
    wait_file "$W/pm.port" "$sp" || { echo "pmacctd: sink did not start" >&2; return 1; }
    port=$(cat "$W/pm.port")
    {
        echo "daemonize: false"
        echo "pcap_savefile: $CAP_ABS"
        echo "plugins: nfprobe"
        echo "nfprobe_receiver: 127.0.0.1:$port"
        echo "nfprobe_version: 10"
        echo "nfprobe_engine: 0"
        echo "nfprobe_maxflows: 2000000"
        if [[ $PM_BUFFER != 0 ]]; then
            echo "plugin_buffer_size: $PM_BUFFER"
            echo "plugin_pipe_size: $((PM_BUFFER * 250))"
        fi
    } > "$W/pmacctd.conf"
    python3 "$W/timed.py" "$W/pmacctd.time" timeout 600 pmacctd -f "$ROOT/$W/pmacctd.conf"
    sleep 0.3  # last datagrams
    kill -TERM "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    local totals drops
    totals=$(python3 "$W/ipfix_totals.py" "$f")
    drops=$(cat "$f.drops" 2>/dev/null || echo null)
    record pmacctd "$run" "$W/pmacctd.time" "$totals" "{\"sink_udp_drops\": $drops}"
}

# ---- rounds --------------------------------------------------------------------------------------
printf 'meter\trun\trc\twall_s\tcpu_s\tpackets\toctets\tflows\ttruth_packets\ttruth_octets\ttruth_flows\n' > "$RES"
: > "$JSONL"
echo "== warming the page cache with $CAP ($(du -h "$CAP" | cut -f1))" >&2
cat "$CAP" > /dev/null
NM=${#METERS[@]}
for run in $(seq 1 "$RUNS"); do
    # Interleaved rounds, so drift on a shared machine spreads over all meters; each round starts
    # with the next meter, so no meter always runs right after pmacctd's teardown; the previous
    # meter's output is written back before the next starts (`sync`), outside the timing.
    for k in $(seq 0 $((NM - 1))); do
        m=${METERS[$(((k + run - 1) % NM))]}
        sync
        sleep 0.5
        case $m in
            ipfixsvc-uniflow) run_ipfixsvc "$m" "$run" --uniflow ;;
            ipfixsvc-biflow) run_ipfixsvc "$m" "$run" ;;
            softflowd) run_softflowd "$run" ;;
            nfpcapd) run_nfpcapd "$run" ;;
            pmacctd) run_pmacctd "$run" ;;
        esac
    done
    echo "== round $run/$RUNS done" >&2
done

# ---- report --------------------------------------------------------------------------------------
python3 - "$RES" "$JSONL" "$TRUTH" "$PM_BUFFER" "${SKIPPED[@]}" <<'EOF'
import csv, json, statistics, sys
res, jsonl, truth_f, pm_buffer, skipped = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
rows = list(csv.DictReader(open(res), delimiter="\t"))
runs = [json.loads(l) for l in open(jsonl)]
truth = json.load(open(truth_f))
med = statistics.median
PROTO = {"1": "ICMP", "6": "TCP", "17": "UDP", "58": "ICMPv6"}

def diff(r):
    parts = []
    for k, label in (("packets", "packets"), ("octets", "octets"), ("flows", "flows")):
        if r[k] == "":
            parts.append(f"{label} ?")
            continue
        d = int(r[k]) - int(r["truth_" + k])
        if d:
            parts.append(f"{label} {d:+,}")
    if r["rc"] != "0":
        parts.insert(0, f"exit {r['rc']}")
    return ", ".join(parts) or "exact"

groups = {}
for r in rows:
    groups.setdefault(r["meter"], []).append(r)
base = med(float(r["wall_s"]) for r in groups["ipfixsvc-uniflow"])
hdr = ("meter", "packets", "wall s", "pkt/s", "cpu s", "pkt/cpu-s", "totals vs truth", "ipfixsvc/peer")
out = [hdr]
for m, rs in groups.items():
    wall = med(float(r["wall_s"]) for r in rs)
    cpu = med(float(r["cpu_s"]) for r in rs)
    pk = med(int(r["packets"] or 0) for r in rs)
    diffs = [diff(r) for r in rs]
    if len(set(diffs)) == 1:
        tot = diffs[0]
    else:
        tot = f"exact in {diffs.count('exact')}/{len(diffs)} runs; " + "; ".join(d for d in dict.fromkeys(diffs) if d != "exact")
    ratio = "1.00" if m == "ipfixsvc-uniflow" else "-" if m.startswith("ipfixsvc") else f"{wall / base:.2f}"
    name = {"ipfixsvc-uniflow": "ipfixsvc --uniflow", "ipfixsvc-biflow": "ipfixsvc (biflow)"}.get(m, m)
    out.append((name, f"{int(pk):,}", f"{wall:.3f}", f"{truth['packets'] / wall / 1e6:.2f}M", f"{cpu:.3f}",
                f"{truth['packets'] / cpu / 1e6:.2f}M", tot, ratio))
w = [max(len(str(row[i])) for row in out) for i in range(len(hdr))]
print()
for row in out:
    print("  ".join(str(c).ljust(w[i]) if i in (0, 6) else str(c).rjust(w[i]) for i, c in enumerate(row)))
nruns = len({r["run"] for r in rows})
print(f"\ncapture: {truth['packets']:,} packets, {truth['bytes']:,} IP bytes, {truth['flows']:,} uniflows, "
      f"{truth['connections']:,} connections. Medians of {nruns} interleaved runs; wall = whole process "
      "timed outside it; ipfixsvc/peer = peer wall / ipfixsvc --uniflow wall.")

notes = []
for m in groups:
    last = [x for x in runs if x["meter"] == m][-1]
    bp = last["totals"].get("by_proto", {})
    if m == "ipfixsvc-biflow":
        if last["totals"]["flows"] != truth["connections"]:
            notes.append(f"ipfixsvc (biflow): {last['totals']['flows']:,} biflow records vs "
                         f"{truth['connections']:,} generator connections: the generator counts every ICMP error "
                         "as a connection, but repeated errors from one router to one host share one flow key "
                         "(its truth 'flows' counts them once)")
        continue
    for p, t in sorted(truth["by_proto"].items(), key=lambda kv: int(kv[0])):
        got = bp.get(p, [0, 0, 0])
        if got[0] != t["flows"]:
            why = " (one flow per packet)" if got[0] == got[1] else ""
            notes.append(f"{m}: {PROTO.get(p, p)} flows {got[0]:,} vs {t['flows']:,} in the truth{why}; "
                         f"packets {got[1] - t['packets']:+,}, octets {got[2] - t['bytes']:+,}")
    if m.startswith("ipfixsvc"):
        for x in runs:
            if x["meter"] == m:
                s, c = x["summary"], x["dump_count"]
                if not (s.get("flows") == c.get("dataRecords") == x["totals"]["flows"]
                        and s.get("packets") == x["totals"]["packets"] and s.get("octets") == x["totals"]["octets"]):
                    notes.append(f"{m} run {x['run']}: its summary says {s.get('flows')} flows, "
                                 f"{s.get('packets')} packets, {s.get('octets')} octets; dump --count "
                                 f"{c.get('dataRecords')} records; decoded {x['totals']}")
    if m == "softflowd":
        for x in runs:
            if x["meter"] == m and (x["own"].get("expired_maxflows") or x["own"].get("export_failures")):
                notes.append(f"softflowd run {x['run']}: {x['own']}")
    for x in runs:
        if x["meter"] != m or x["totals"].get("packets", 0) == truth["packets"]:
            continue
        where = []
        if m != "softflowd" and "seq_gap_records" in x["totals"]:  # softflowd numbers messages its own way
            g = x["totals"]["seq_gap_records"]
            where.append(f"IPFIX sequence numbers skip {g:,} records" if g else "no IPFIX sequence gap")
        if "sink_udp_drops" in x:
            d = x["sink_udp_drops"]
            where.append(f"the sink's UDP socket dropped {d} datagrams" if d else "no drops at the sink")
        lost = truth["packets"] - x["totals"].get("packets", 0)
        notes.append(f"{m} run {x['run']}: {lost:,} packets missing from its flows"
                     + (f" ({', '.join(where)})" if where else ""))
        if m == "pmacctd" and x["totals"].get("seq_gap_records") == 0 and not x.get("sink_udp_drops"):
            notes.append("  -> never exported: in the runs examined these were the capture's last packets, still "
                         "in pmacctd's core-to-plugin buffer when it stopped the plugin at end of file")
    if m == "pmacctd":
        notes.append("pmacctd: sleeps 2 s before reading a file (by design, counted in its time); "
                     + (f"plugin_buffer_size {pm_buffer} (pmacct's default buffering is ~10x slower and "
                        "loses packets when the core outruns the plugin)" if pm_buffer != "0"
                        else "pmacct's default plugin buffering (PM_BUFFER=0)"))
for s in skipped:
    notes.append(f"skipped {s}")
if notes:
    print("notes:")
    for n in notes:
        print("  " + n)

# targets
by_run = {}
for r in rows:
    by_run.setdefault(r["run"], {})[r["meter"]] = float(r["wall_s"])
uni = groups["ipfixsvc-uniflow"]
cpu = med(float(r["cpu_s"]) for r in uni)
exact = all(diff(r) == "exact" for r in uni)
print("targets (ipfixsvc --uniflow):")
if "softflowd" in groups:
    ratios = [v["softflowd"] / v["ipfixsvc-uniflow"] for v in by_run.values() if "softflowd" in v]
    print(f"  >= 3x softflowd in the same round: {'met' if min(ratios) >= 3 else 'NOT met'} "
          f"(per round: {', '.join(f'{x:.2f}x' for x in ratios)})")
else:
    print("  >= 3x softflowd: not measured (softflowd skipped)")
per_round = ", ".join(f"{truth['packets'] / float(r['cpu_s']) / 1e6:.2f}M" for r in uni)
print(f"  >= 5M packets per CPU-second: {'met' if truth['packets'] / cpu >= 5e6 else 'NOT met'} "
      f"(median {truth['packets'] / cpu / 1e6:.2f}M, per round {per_round}; "
      f"wall {truth['packets'] / base / 1e6:.2f}M packets/s)")
print(f"  totals exactly the capture's: {'met' if exact else 'NOT met'}")
EOF
