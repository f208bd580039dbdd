#!/usr/bin/env python3
"""Mediator benchmark: what a user gets through export streams, end to end.

  python3 bench/mediator.py [--messages 100000] [--rounds 3] [--no-build] [--skip-udp] [--only NAME]

TCP: one `ipfixsvc send` session streams the generator's fixed file (23-record messages of 13
fields) into `ipfixsvc serve` (release) configured with the streams of each case. The time runs
from the first byte sent to the collector's exit after SIGTERM, which it reaches only when every
stream has written what it holds (the drain), or, for IPFIX re-export, to the last record decoded
by the second collector. Cases are interleaved, `--rounds` times; medians are printed, with the
ratio to the bare collector (no stream but the counted default) of the same rounds, and every
stream's records out are checked against what was sent (from its "stream finished" log line).

UDP: the same file paced by `ipfixsvc send --rate`, side by side with nfcapd (Debian nfdump) in
one run, 4 MiB receive buffers both: for each rate of a ladder, three trials each; the highest
rate at which every trial stored >= 99.9% of the records, for ipfixsvc with an `ipfix_file`
sink, ipfixsvc with an `ndjson` file sink, and nfcapd writing its own files. Files go to tmpfs
(/dev/shm), so the disk is not what is measured.

Targets only loopback. Standard library only; redis-server for the redis_stream cases.
"""

import argparse
import glob
import http.server
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import collector  # noqa: E402  (the collector benchmark's helpers: Serve, dump_count, ...)
import cluster  # noqa: E402  (its Redis on a free loopback port)

BIN = collector.BIN
SHM = "/dev/shm"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_stream(name, sink, filter_=None, extra=""):
    f = f'filter = "{filter_}"\n' if filter_ else ""
    return f'[[mediator.streams]]\nname = "{name}"\n{f}sink = {sink}\n{extra}\n'


class Run:
    """One collector with the streams of `config` (TOML text, empty for the default stream)."""

    def __init__(self, config, extra_env=None):
        self.dir = tempfile.mkdtemp(prefix="ipfixsvc-medbench-", dir=SHM)
        env = {"IPFIXSVC__SHUTDOWN__GRACE_SECS": "300",
               "IPFIXSVC__STORAGE__DIR": os.path.join(self.dir, "storage")}
        if config:
            path = os.path.join(self.dir, "config.toml")
            with open(path, "w") as f:
                f.write(config)
            env["IPFIXSVC_CONFIG"] = path
        env.update(extra_env or {})
        self.serve = collector.Serve(env)

    def exit(self):
        """SIGTERM, then the collector's exit (the drain done): its CPU seconds and exit code."""
        p = self.serve.proc
        p.send_signal(signal.SIGTERM)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        time.sleep(0.05)  # the log reader's last lines
        return ru.ru_utime + ru.ru_stime, p.returncode

    def finished(self):
        """Records out per stream, from the drain's "stream finished" lines."""
        out = {}
        for line in self.serve.lines:
            if "stream finished" in line:
                name = re.search(r"stream=\"?([^\s\"]+)", line).group(1)
                out[name] = int(re.search(r"records_out=(\d+)", line).group(1))
        return out

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class HttpSink(http.server.ThreadingHTTPServer):
    """A receiver for the `http` sink: counts the NDJSON lines it is POSTed."""

    def __init__(self):
        self.lines = 0
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.lines += body.count(b"\n")
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def cases(rd, http_url):
    """(name, config TOML, streams that must each write every record, peer needed)."""
    keep_all = "octetDeltaCount >= 0"
    one = [
        ("bare (0 streams: the default, counted)", "", [], False),
        ("filter keeping nothing (discard)", toml_stream("none", '{ kind = "discard" }', "protocolIdentifier == 255"), [], False),
        ("1 stream (discard, filter keeps all)", toml_stream("s0", '{ kind = "discard" }', keep_all), ["s0"], False),
        ("8 streams (discard, filter keeps all)",
         "".join(toml_stream(f"s{i}", '{ kind = "discard" }', keep_all) for i in range(8)),
         [f"s{i}" for i in range(8)], False),
        ("ndjson to /dev/null", toml_stream("n", '{ kind = "ndjson", path = "/dev/null" }'), ["n"], False),
        ("ndjson to a file (tmpfs)", toml_stream("f", '{ kind = "ndjson", path = "@DIR@/out.ndjson" }'), ["f"], False),
        ("ipfix_file (tmpfs)", toml_stream("i", '{ kind = "ipfix_file", dir = "@DIR@/ipfix" }'), ["i"], False),
        ("ipfix over TCP to a second ipfixsvc", toml_stream("x", '{ kind = "ipfix", transport = "tcp", to = "@PEER@" }'), ["x"], True),
        ("8 ipfix_file streams (tmpfs)",
         "".join(toml_stream(f"i{i}", f'{{ kind = "ipfix_file", dir = "@DIR@/ipfix{i}" }}') for i in range(8)),
         [f"i{i}" for i in range(8)], False),
        ("http (POSTs to a Python receiver, 5000 records each)",
         toml_stream("h", f'{{ kind = "http", url = "{http_url}", batch_records = 5000 }}', extra='on_full = "block"'),
         ["h"], False),
    ]
    if rd:
        url = f"redis://127.0.0.1:{rd.port}"
        one += [
            ("redis_stream, an entry per batch", toml_stream("rb", f'{{ kind = "redis_stream", url = "{url}", key = "b", maxlen = 1000, entry = "batch" }}', extra='on_full = "block"'), ["rb"], False),
            ("redis_stream, an entry per record", toml_stream("rr", f'{{ kind = "redis_stream", url = "{url}", key = "r", maxlen = 100000, entry = "record" }}', extra='on_full = "block"'), ["rr"], False),
        ]
    return one


def tcp_case(path, records, config, must, peer):
    b = None
    if peer:
        b = Run("")
        config = config.replace("@PEER@", "%s:%d" % b.serve.tcp)
    outdir = tempfile.mkdtemp(prefix="ipfixsvc-medbench-out-", dir=SHM)
    r = Run(config.replace("@DIR@", outdir))
    t0 = time.time()
    subprocess.run([BIN, "send", path, "--to", "%s:%d" % r.serve.tcp], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu, rc = r.exit()
    if b:
        ended = b.serve.wait_ended(1, timeout=300)
        got_b = sum(collector.records_of(l) for l in ended)
        t1 = time.time()
        cpu += collector.cpu_seconds(b.serve.proc.pid)
        b.serve.stop()
        b.cleanup()
        if got_b != records:
            print(f"  WARNING: the second collector decoded {got_b} of {records}", file=sys.stderr)
    else:
        t1 = time.time()
    fin = r.finished()
    for s in must:
        if fin.get(s) != records:
            print(f"  WARNING: stream {s} wrote {fin.get(s)} of {records} records (exit {rc})", file=sys.stderr)
    if rc != 0:
        print(f"  WARNING: exit {rc}: {r.serve.lines[-5:]}", file=sys.stderr)
    r.cleanup()
    shutil.rmtree(outdir, ignore_errors=True)
    return t1 - t0, cpu


def stored_udp(kind, path, rate):
    """Records stored by one UDP trial of `kind` (ipfix_file, ndjson, nfcapd) at `rate`."""
    d = tempfile.mkdtemp(prefix="ipfixsvc-udpbench-", dir=SHM)
    try:
        if kind == "nfcapd":
            port = free_port(socket.SOCK_DGRAM)
            p = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", d, "-t", "3600",
                                  "-B", str(4 << 20)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            to = f"127.0.0.1:{port}"
        else:
            sink = ('{ kind = "ipfix_file", dir = "%s" }' % d if kind == "ipfix_file"
                    else '{ kind = "ndjson", path = "%s/out.ndjson" }' % d)
            r = Run(toml_stream(kind, sink), {"IPFIXSVC__COLLECTOR__UDP_RECEIVE_BUFFER_BYTES": str(4 << 20)})
            to = "%s:%d" % r.serve.udp
        subprocess.run([BIN, "send", path, "--udp", "--rate", str(rate), "--to", to], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # what the socket buffers still hold is read
        if kind == "nfcapd":
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
            out = subprocess.run(["nfdump", "-R", d, "-q", "-o", "fmt:%pkt"], capture_output=True, text=True)
            return sum(1 for l in out.stdout.splitlines() if l.strip())
        r.exit()
        r.cleanup()
        if kind == "ndjson":
            with open(os.path.join(d, "out.ndjson"), "rb") as f:
                return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
        return sum(collector.dump_count(f) for f in glob.glob(os.path.join(d, "*.ipfix")))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--skip-udp", action="store_true")
    ap.add_argument("--skip-tcp", action="store_true")
    ap.add_argument("--only", help="run the TCP cases whose name contains this")
    ap.add_argument("--udp-rates", default="1000000,2000000,3000000,4000000,5000000")
    a = ap.parse_args()
    os.makedirs(collector.OUT, exist_ok=True)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=collector.ROOT, check=True)
    path = os.path.join(collector.OUT, f"collector-fixed-{a.messages}.ipfix")
    if not os.path.exists(path):
        gen = os.path.join(collector.ROOT, "..", "shared", "bench", "gen_ipfix.py")
        subprocess.run([sys.executable, gen, "--kind", "fixed", "--messages", str(a.messages),
                        "--records-per-message", "23", "--out", path], check=True, stdout=subprocess.DEVNULL)
    records = collector.dump_count(path)
    print(f"file: {path} ({records} records, {os.path.getsize(path)} bytes)")
    if not a.skip_tcp:
        rd = cluster.Redis() if shutil.which("redis-server") else None
        hs = HttpSink()
        all_cases = cases(rd, "http://127.0.0.1:%d/flows" % hs.server_address[1])
        if a.only:
            all_cases = [c for c in all_cases if a.only in c[0] or c[0].startswith("bare")]
        walls = {c[0]: [] for c in all_cases}
        cpus = {c[0]: [] for c in all_cases}
        for rnd in range(a.rounds):
            for name, config, must, peer in all_cases:
                w, c = tcp_case(path, records, config, must, peer)
                walls[name].append(w)
                cpus[name].append(c)
                print(f"  round {rnd + 1}: {name}: {records / w / 1e6:.2f}M rec/s", file=sys.stderr)
        hs.shutdown()
        if rd:
            rd.stop()
        bare = statistics.median(walls[all_cases[0][0]])
        print()
        print("TCP, 1 session, first byte sent to the drain's end (medians of %d rounds)" % a.rounds)
        print(f"{'case':<52} {'rec/s':>8} {'of bare':>8} {'cpu s/M rec':>12}")
        for name, *_ in all_cases:
            w = statistics.median(walls[name])
            c = statistics.median(cpus[name])
            print(f"{name:<52} {records / w / 1e6:>7.2f}M {bare / w:>8.2f} {c / records * 1e6:>12.2f}")
        if hs.lines:
            print(f"(the http receiver counted {hs.lines} lines over all rounds)")
    if not a.skip_udp:
        print()
        print("UDP paced, 4 MiB receive buffers, files in tmpfs: the highest rate with >= 99.9% stored in 3 of 3 trials")
        rates = [int(x) for x in a.udp_rates.split(",")]
        kinds = ["ipfix_file", "ndjson"] + (["nfcapd"] if shutil.which("nfcapd") else [])
        best = {k: 0 for k in kinds}
        going = set(kinds)
        for rate in rates:
            for kind in kinds:
                if kind not in going:
                    continue
                trials = [stored_udp(kind, path, rate) for _ in range(3)]
                print(f"  {kind:<10} at {rate / 1e6:.1f}M rec/s: stored "
                      + ", ".join("%.2f%%" % (100 * t / records) for t in trials), flush=True)
                if all(t >= records * 0.999 for t in trials):
                    best[kind] = rate
                else:
                    going.discard(kind)
        for kind in kinds:
            print(f"  {kind:<10} lossless up to {best[kind] / 1e6:.1f}M records/s (of the rates tried)")

if __name__ == "__main__":
    main()
