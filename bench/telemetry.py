#!/usr/bin/env python3
"""Telemetry overhead: the collector's throughput with telemetry fully on versus as shipped.

  python3 bench/telemetry.py [--rounds 5] [--messages 100000] [--no-build]

  off  the defaults: no OTLP endpoint, the sampler every 5 s (the per-exporter and per-tenant
       counters and the busy times are always kept: they are not a switch)
  on   spans and metrics exported over OTLP/HTTP every second to a live receiver on loopback
       (it reads each request whole and answers 200), the TelemetrySampler every second
       (sysinfo, /proc/self/task, every actor's figures), sampling ratio 1.0, and /metrics
       scraped every second

Workloads, interleaved (off, on, off, on, ...; each round alternates which goes first):
  ndjson  what a user gets: 1 TCP session, records written as NDJSON to a file in /dev/shm
  count   the decode path alone: 4 TCP sessions, records counted

Reports per workload the medians of records/s (first byte sent to the last record decoded) and
of records per CPU-second of the collector, and on/off ratios. Standard library only; loopback
only. The file is bench/out/collector-fixed-N.ipfix (../shared/bench/gen_ipfix.py --kind fixed).
"""

import argparse
import http.server
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import collector  # noqa: E402  (Serve, cpu_seconds, dump_count, the file)

ROOT = collector.ROOT
BIN = collector.BIN
TOKEN = "bench-telemetry-admin-token-0123456789"


class Receiver(http.server.BaseHTTPRequestHandler):
    received = 0
    requests = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Receiver.received += len(body)
        Receiver.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def scraper(api, stop):
    while not stop.is_set():
        try:
            urllib.request.urlopen(f"http://{api}/metrics", timeout=5).read()
        except OSError:
            pass
        stop.wait(1.0)


def api_addr(serve):
    deadline = time.time() + 20
    while time.time() < deadline:
        for line in serve.lines:
            if "API listening" in line:
                for w in line.split():
                    if w.startswith("api="):
                        return w[4:]
        time.sleep(0.02)
    sys.exit(f"no API address: {serve.lines}")


def run(path, records, on, workload, endpoint, tmp):
    env = {
        "IPFIXSVC__NODE__ROLES": "collector,api",
        "IPFIXSVC__API__LISTEN": "127.0.0.1:0",
        "IPFIXSVC__API__ADMIN_TOKEN": TOKEN,
        "IPFIXSVC__STORAGE__DIR": os.path.join(tmp, "data"),
    }
    out = os.path.join(tmp, "records.ndjson")
    if workload == "ndjson":
        env["IPFIXSVC__OUTPUT__FORMAT"] = "ndjson"
        env["IPFIXSVC__OUTPUT__PATH"] = out
        sessions = 1
    else:
        sessions = 4
    if on:
        env.update({
            "IPFIXSVC__TELEMETRY__OTLP_ENDPOINT": endpoint,
            "IPFIXSVC__TELEMETRY__METRICS_INTERVAL_SECS": "1",
            "IPFIXSVC__TELEMETRY__SAMPLE_SECS": "1",
            "IPFIXSVC__TELEMETRY__SAMPLING_RATIO": "1.0",
        })
    s = collector.Serve(env)
    stop = threading.Event()
    if on:
        threading.Thread(target=scraper, args=(api_addr(s), stop), daemon=True).start()
    time.sleep(1.5)  # both start the same: the sampler and exporters running
    cpu0 = collector.cpu_seconds(s.proc.pid)
    t0 = time.time()
    senders = [subprocess.Popen([BIN, "send", path, "--to", "%s:%d" % s.tcp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(sessions)]
    if workload == "ndjson":
        # Every line written: the file has one line per record.
        want = records
        while True:
            with open(out, "rb") as f:
                n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            if n >= want:
                break
            time.sleep(0.01)
    else:
        s.wait_ended(sessions)
    t1 = time.time()
    cpu = collector.cpu_seconds(s.proc.pid) - cpu0
    for p in senders:
        p.wait()
    got = sum(collector.records_of(l) for l in s.ended()) if workload == "count" else records
    stop.set()
    s.stop()
    if os.path.exists(out):
        os.remove(out)
    return got, t1 - t0, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    path = os.path.join(collector.OUT, f"collector-fixed-{a.messages}.ipfix")
    if not os.path.exists(path):
        os.makedirs(collector.OUT, exist_ok=True)
        gen = os.path.join(ROOT, "..", "shared", "bench", "gen_ipfix.py")
        subprocess.run([sys.executable, gen, "--kind", "fixed", "--messages", str(a.messages),
                        "--records-per-message", "23", "--out", path], check=True,
                       stdout=subprocess.DEVNULL)
    records = collector.dump_count(path)
    receiver = start_receiver()
    endpoint = "http://127.0.0.1:%d" % receiver.server_address[1]
    tmp = "/dev/shm/ipfixsvc-bench-telemetry" if os.path.isdir("/dev/shm") else "/tmp/ipfixsvc-bench-telemetry"
    os.makedirs(tmp, exist_ok=True)
    print(f"file {path}: {records} records; {a.rounds} interleaved rounds; "
          f"commit {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}")
    print(f"{'workload':>8} {'telemetry':>9} {'records/s':>11} {'rec/cpu-s':>11}")
    for workload in ("ndjson", "count"):
        rate = {False: [], True: []}
        per_cpu = {False: [], True: []}
        for r in range(a.rounds):
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                got, wall, cpu = run(path, records, on, workload, endpoint, tmp)
                want = records * (1 if workload == "ndjson" else 4)
                if got != want:
                    sys.exit(f"{workload} {'on' if on else 'off'}: {got} of {want} records")
                rate[on].append(got / wall)
                per_cpu[on].append(got / max(cpu, 1e-9))
        for on in (False, True):
            print(f"{workload:>8} {'on' if on else 'off':>9} {statistics.median(rate[on]) / 1e6:>10.2f}M "
                  f"{statistics.median(per_cpu[on]) / 1e6:>10.2f}M")
        print(f"{workload:>8} {'on/off':>9} {statistics.median(rate[True]) / statistics.median(rate[False]):>11.3f} "
              f"{statistics.median(per_cpu[True]) / statistics.median(per_cpu[False]):>11.3f}")
    print(f"the receiver got {Receiver.requests} OTLP requests, {Receiver.received} bytes")


if __name__ == "__main__":
    main()
