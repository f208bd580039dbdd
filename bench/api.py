#!/usr/bin/env python3
"""HTTP API benchmark: `ipfixsvc serve` (release binary, roles collector,api,jobs, output counted)
driven over loopback by `hey` (Debian package `hey`) and by this script.

  python3 bench/api.py [--quick] [--only reads,upload,collector] [--sessions 1000] [--rate 5000]
                       [--duration 10] [--warm 2] [--max-conc 64] [--spread 10] [--server-cpus 0]
                       [--hey-cpus 1] [--upload-bytes 2000000000] [--collector-sessions 1]
                       [--collector-loop 4] [--rounds 2] [--poll-path /api/v1/sessions]
                       [--wait-idle 300] [--retries 2]

Needs target/release/ipfixsvc (not built here) and hey (apt-get install hey).

Reports, for one run on this machine (every figure with the command that produced it):
  * reads: `GET /api/v1/tenants/acme/sessions` on a node holding N (1,000) TCP exporter sessions of
    tenant acme (sockets of this script, from 127.0.0.2.., 125 per source address, each sent the
    first message of example_flows.ipfix and kept open), and `GET /api/v1/tenants/acme/jobs/{id}`
    of a succeeded job (http.pcap converted):
      - at a fixed rate (`hey -z D -c 50 -q RATE/50`): p50 and p99 latency as hey measures them,
        the rate hey achieved (flagged when under 98% of the target: hey's workers then fall
        behind and its latencies understate the queueing, i.e. coordinated omission), the
        server-side p50/p99 (`took_us` of the server's own request log lines), and the server's
        CPU-seconds per 10,000 requests (utime+stime from /proc/PID/stat);
      - the most requests/s (`hey -z D -c 64`, no rate limit), with the server's and hey's CPU
        use, to tell which side was the bottleneck.
      - the job record again at the same rate and 50 workers, split over --spread (10) hey
        processes started 1 ms apart: one hey's workers tick in lockstep, so `-c 50 -q 100` sends
        bursts of 50 requests every 10 ms, not an even 5,000/s; this row shows what the bursts cost.
    The server is pinned with `taskset -c 0` and hey with `taskset -c 1` (and `-cpus 1`) for both
    (--server-cpus / --hey-cpus change that). Each hey run follows a short unmeasured warm-up.
    The machine is shared: each row says how much CPU other processes used meanwhile (/proc/stat
    less ours); before each measurement the script waits (up to --wait-idle s) for the machine to
    be quiet, and repeats a hey run disturbed by more than a quarter of a core (up to --retries
    times), keeping the least disturbed attempt.
  * upload: a pcap of --upload-bytes (2,000,000,000 bytes; MB = 10^6 bytes throughout) streamed by
    http.client with a Content-Length: the 24-byte header of http.pcap, then its packet records
    repeated (a block of ~4 MiB of whole records, built in memory: no capture file is written by
    the client). Wall time from the first byte of the request to the 202 -> MB/s; the server's
    VmRSS sampled every 50 ms: before, peak, growth in MiB; server and client CPU during it, the
    server's write calls (/proc/PID/io) and CPU per thread name. The job is cancelled (DELETE)
    right after the 202. Under 500 MB/s, the same bytes are also written by this script to a file
    in /tmp, to tell the disk from the server. The node stores the upload under its
    storage.dir in /tmp (filesystem type printed); everything is removed at the end.
  * collector: TCP records/s as bench/collector.py measures it (`ipfixsvc send FILE --loop L` to a
    node with output.format = count, from the first byte sent to the last "exporter session ended"
    line), once alone and once while `hey -c 50 -q 20` (1,000 requests/s) polls
    `GET /api/v1/sessions` (admin) for the whole run; --rounds rounds, alternating A B A B;
    medians and the ratio polled/alone; per run the collector's CPU-seconds and context switches
    (/proc/PID/task/*/status) and how busy the machine was. --poll-path polls another route
    (e.g. /healthz, which touches no session, to tell the API's cost from other effects).
The table is printed and written to bench/out/api-<timestamp>.txt.

Helpers (BIN, OUT, cpu_seconds, rss_kib, raise_nofile, dump_count, records_of) are imported from
bench/collector.py (same folder, put on sys.path). Every process started here (nodes, hey, send)
is stopped on exit, on an error and on Ctrl-C. Standard library only; targets only loopback.
"""

import argparse
import atexit
import datetime
import http.client
import json
import math
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True   # no bench/__pycache__ from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from collector import BIN, OUT, ROOT, cpu_seconds, dump_count, raise_nofile, records_of, rss_kib  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared")
IPFIX_FILE = os.path.join(SHARED, "testdata", "ipfix", "example_flows.ipfix")
PCAP_FILE = os.path.join(SHARED, "testdata", "traffic", "http.pcap")
TENANT = "acme"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# ---------------------------------------------------------------- processes and cleanup

PROCS = []      # every Popen started here, stopped by cleanup()
NODES = []      # every Node, stopped (and its folder removed) by cleanup()


class BenchError(Exception):
    pass


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    PROCS.append(p)
    return p


def stop_proc(p, sig=signal.SIGTERM, grace=15):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        except ProcessLookupError:
            pass


def cleanup():
    for n in list(NODES):
        n.stop()
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def on_signal(signum, _frame):
    raise SystemExit(f"signal {signum}: stopping")


def busy_cpu():
    """CPU-seconds all processes of the machine used so far (user, nice, system, irq, softirq,
    steal from /proc/stat): less ours, what others ran meanwhile (a shared machine)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


WAIT_IDLE = [0.0]   # --wait-idle
NOISY = []          # measurements that started on a busy machine


def wait_idle(what):
    """Wait (up to --wait-idle s) until the machine's other load is under a quarter of a core over
    2 s, so a measurement does not start during someone else's compile; say so when it does."""
    deadline = time.time() + WAIT_IDLE[0]
    while True:
        b0 = busy_cpu()
        time.sleep(2)
        load = (busy_cpu() - b0) / 2
        if load < 0.25:
            return
        if time.time() > deadline:
            print(f"WARNING: {what}: machine still busy ({100 * load:.0f}% of a core), measuring anyway", file=sys.stderr)
            NOISY.append(f"{what} ({100 * load:.0f}%)")
            return


RETRIES = [2]       # --retries


def steady(fn, *args):
    """fn(*args), again (up to --retries times) while other processes used more than a quarter of
    a core during it; the least disturbed attempt is kept, with the number of attempts."""
    best = None
    for i in range(1 + RETRIES[0]):
        r = fn(*args)
        r["attempts"] = i + 1
        if best is None or r["others"] / r["wall"] < best["others"] / best["wall"]:
            best = r
        if r["others"] / r["wall"] < 0.25:
            break
        print(f"note: others used {100 * r['others'] / r['wall']:.0f}% of a core during it"
              + ("; again" if i < RETRIES[0] else ""), file=sys.stderr)
    best["attempts_all"] = i + 1
    return best


def ctx_switches(pid):
    """Voluntary + involuntary context switches of all live threads of a process."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n += sum(int(l.split()[1]) for l in f if "ctxt_switches:" in l)
        except OSError:
            pass
    return n


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- the node

class Node:
    """An `ipfixsvc serve` process; its log goes to a file in its own folder under /tmp."""

    def __init__(self, roles="collector,api,jobs", cpus=None, extra_env=None):
        self.dir = tempfile.mkdtemp(prefix="ipfixsvc-api-bench-", dir="/tmp")
        self.storage = os.path.join(self.dir, "storage")
        self.log_path = os.path.join(self.dir, "serve.log")
        self.token = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPFIXSVC__") and k != "RUST_LOG"}
        env.update({
            "IPFIXSVC__NODE__ROLES": roles,
            "IPFIXSVC__API__LISTEN": "127.0.0.1:0",
            "IPFIXSVC__API__ADMIN_TOKEN": self.token,
            "IPFIXSVC__STORAGE__DIR": self.storage,
            "IPFIXSVC__COLLECTOR__TCP_LISTEN": "127.0.0.1:0",
            "IPFIXSVC__COLLECTOR__UDP_LISTEN": "127.0.0.1:0",
            "IPFIXSVC__OUTPUT__FORMAT": "count",
            "RUST_LOG": "info",
        })
        env.update(extra_env or {})
        self.env = {k: v for k, v in env.items() if k.startswith("IPFIXSVC__")}
        cmd = ([] if cpus is None else ["taskset", "-c", cpus]) + [BIN, "serve"]
        self.cmd = cmd
        self.log = open(self.log_path, "w")
        self.proc = spawn(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
                          preexec_fn=lambda: raise_nofile(65536))
        self.pid = self.proc.pid
        NODES.append(self)
        self._off = 0
        self._partial = ""
        self.api = self._addr("api=")
        self.tcp = self._addr("tcp=") if "collector" in roles else None
        self._wait_healthy()

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return ANSI.sub("", f.read())

    def tail(self, n=20):
        return "\n".join(self.text().splitlines()[-n:])

    def offset(self):
        return os.path.getsize(self.log_path)

    def lines_since(self, off):
        with open(self.log_path, errors="replace") as f:
            f.seek(off)
            return [ANSI.sub("", l) for l in f.read().splitlines()]

    def new_lines(self):
        """Complete log lines written since the last call."""
        with open(self.log_path, errors="replace") as f:
            f.seek(self._off)
            data = f.read()
            self._off = f.tell()
        data = self._partial + data
        lines = data.split("\n")
        self._partial = lines.pop()
        return [ANSI.sub("", l) for l in lines]

    def _addr(self, key):
        deadline = time.time() + 20
        while time.time() < deadline:
            m = re.search(re.escape(key) + r"([0-9.]+):(\d+)", self.text())
            if m:
                return (m.group(1), int(m.group(2)))
            if self.proc.poll() is not None:
                raise BenchError(f"ipfixsvc serve exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise BenchError(f"ipfixsvc serve did not log {key} within 20 s:\n{self.tail()}")

    def _wait_healthy(self):
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.request("GET", "/healthz", auth=False)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"/healthz did not answer 200 within 20 s:\n{self.tail()}")

    def url(self, path):
        return "http://%s:%d%s" % (self.api[0], self.api[1], path)

    def request(self, method, path, body=None, headers=None, auth=True, timeout=60):
        c = http.client.HTTPConnection(*self.api, timeout=timeout)
        h = dict(headers or {})
        if auth:
            h["Authorization"] = f"Bearer {self.token}"
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, want=(200,), **kw):
        headers = {}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, _, data = self.request(method, path, body=body, headers=headers, **kw)
        if status not in want:
            raise BenchError(f"{method} {path}: {status} (wanted {want}): {data[:500]!r}")
        return json.loads(data) if data else None

    def stop(self):
        if self in NODES:
            NODES.remove(self)
        stop_proc(self.proc, grace=30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def create_tenant(node, exporters=("127.0.0.0/8",)):
    return node.json("POST", "/api/v1/tenants", {"id": TENANT, "exporters": list(exporters)}, want=(201,))


# ---------------------------------------------------------------- hey

def hey_cmd(url, token, seconds, conc, qps=None, cpus=None, csv=False):
    cmd = [] if cpus is None else ["taskset", "-c", cpus]
    cmd += ["hey", "-z", f"{seconds:g}s", "-c", str(conc)]
    if qps:
        cmd += ["-q", f"{qps:g}"]
    if cpus is not None and "," not in cpus and "-" not in cpus:
        cmd += ["-cpus", "1"]
    if csv:
        cmd += ["-o", "csv"]
    cmd += ["-H", f"Authorization: Bearer {token}", url]
    return cmd


def shown(cmd, token):
    """The command as it ran, the node's random admin token written as $TOKEN."""
    return shlex.join(cmd).replace(token, "$TOKEN")


def parse_hey(out):
    def num(pat):
        m = re.search(pat, out)
        return float(m.group(1)) if m else None
    pct = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = 0
    if "Error distribution:" in out:
        errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+\S", out.split("Error distribution:", 1)[1]))
    rps = num(r"Requests/sec:\s+([\d.]+)")
    if rps is None:
        raise BenchError(f"could not read hey's output:\n{out[-2000:]}")
    return {"rps": rps, "total_s": num(r"Total:\s+([\d.]+) secs"), "p50": pct.get(50), "p99": pct.get(99),
            "codes": codes, "errors": errors, "requests": sum(codes.values()) + errors,
            "size": num(r"Size/request:\s+([\d.]+) bytes"), "slowest": (num(r"Slowest:\s+([\d.]+) secs") or 0) * 1000}


def run_hey(cmd, seconds):
    c0 = child_cpu()
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise BenchError(f"hey did not finish within {seconds + 60} s: {shlex.join(cmd)}")
    if p.returncode != 0:
        raise BenchError(f"hey exited {p.returncode}: {out[-2000:]}")
    r = parse_hey(out)
    r["hey_cpu"] = child_cpu() - c0
    return r


def server_side(node, off, path):
    """p50/p99 of the server's own `took_us` for one path, from its request log lines since off."""
    took = []
    for l in node.lines_since(off):
        if "http request" in l and (f'path="{path}"' in l or f"path={path} " in l):
            m = re.search(r"took_us=(\d+)", l)
            if m:
                took.append(int(m.group(1)))
    if not took:
        return None, None, 0
    took.sort()
    q = lambda f: took[min(len(took) - 1, int(f * len(took)))] / 1000
    return q(0.50), q(0.99), len(took)


def measure(node, path, seconds, conc, qps, cpus, warm):
    url = node.url(path)
    wait_idle(path)
    if warm:
        run_hey(hey_cmd(url, node.token, warm, conc, qps, cpus), warm)
    cmd = hey_cmd(url, node.token, seconds, conc, qps, cpus)
    off = node.offset()
    cpu0, b0, s0 = cpu_seconds(node.pid), busy_cpu(), time.process_time()
    t0 = time.time()
    r = run_hey(cmd, seconds)
    r["wall"] = time.time() - t0
    r["server_cpu"] = cpu_seconds(node.pid) - cpu0
    r["others"] = busy_cpu() - b0 - r["server_cpu"] - r["hey_cpu"] - (time.process_time() - s0)
    r["srv_p50"], r["srv_p99"], r["srv_n"] = server_side(node, off, path)
    r["cmd"] = shown(cmd, node.token)
    bad = {c: n for c, n in r["codes"].items() if c != 200}
    if bad or r["errors"]:
        print(f"WARNING: {path}: non-200 answers {bad}, {r['errors']} errors", file=sys.stderr)
    r["bad"] = sum(bad.values()) + r["errors"]
    return r


def measure_spread(node, path, seconds, rate, procs, cpus):
    """The same rate and 50 workers, as `procs` hey processes of 50/procs workers started one
    after the other over one tick (10 ms): hey's workers tick in lockstep (each its own
    time.Tick, all started at once), so one hey sends bursts of 50 requests every 10 ms; here the
    bursts are procs times smaller and spread over the tick. Latencies from hey -o csv, merged."""
    url = node.url(path)
    conc = 50 // procs
    qps = rate / 50
    cmd = hey_cmd(url, node.token, seconds, conc, qps, cpus, csv=True)
    wait_idle(path)
    off = node.offset()
    cpu0, c0, b0, s0 = cpu_seconds(node.pid), child_cpu(), busy_cpu(), time.process_time()
    t0 = time.time()
    ps = []
    for _ in range(procs):
        ps.append(spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(1 / qps / procs)
    lat, codes = [], {}
    for p in ps:
        try:
            out, _ = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"hey did not finish within {seconds + 60} s: {shlex.join(cmd)}")
        for line in out.splitlines()[1:]:
            f = line.split(",")
            if len(f) >= 8:
                lat.append(float(f[0]) * 1000)
                codes[int(f[6])] = codes.get(int(f[6]), 0) + 1
    wall = time.time() - t0
    if not lat:
        raise BenchError("hey -o csv gave no results")
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
    r = {"p50": q(0.5), "p99": q(0.99), "rps": len(lat) / seconds, "requests": len(lat), "wall": wall,
         "server_cpu": cpu_seconds(node.pid) - cpu0, "hey_cpu": child_cpu() - c0, "codes": codes,
         "others": busy_cpu() - b0 - (cpu_seconds(node.pid) - cpu0) - (child_cpu() - c0) - (time.process_time() - s0),
         "cmd": f"{procs} x {shown(cmd, node.token)}, started {1000 / qps / procs:g} ms apart"}
    r["srv_p50"], r["srv_p99"], r["srv_n"] = server_side(node, off, path)
    r["bad"] = sum(n for c, n in codes.items() if c != 200)
    return r


# ---------------------------------------------------------------- reads

def first_message(path):
    with open(path, "rb") as f:
        head = f.read(4)
        version, length = struct.unpack(">HH", head)
        if version != 10:
            raise BenchError(f"{path}: not IPFIX (version {version})")
        return head + f.read(length - 4)


def open_sessions(node, n, per_addr=125):
    raise_nofile(n + 1024)
    msg = first_message(IPFIX_FILE)
    addrs = math.ceil(n / per_addr)
    if addrs > 250:
        raise BenchError("too many sessions for 127.0.0.2..127.0.0.251")
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.0.{2 + i // per_addr}", 0))
        s.settimeout(10)
        s.connect(node.tcp)
        s.sendall(msg)
        socks.append(s)
    return socks, addrs, len(msg)


def listed(node):
    status, _, body = node.request("GET", f"/api/v1/tenants/{TENANT}/sessions?limit=1000")
    if status != 200:
        raise BenchError(f"GET sessions: {status} {body[:300]!r}")
    d = json.loads(body)
    return len(d["sessions"]), len(body), d.get("errors")


def wait_sessions(node, n, timeout=60):
    deadline = time.time() + timeout
    got = (0, 0, None)
    while time.time() < deadline:
        got = listed(node)
        if got[0] >= n:
            return got
        time.sleep(0.5)
    raise BenchError(f"only {got[0]} of {n} sessions listed after {timeout} s (errors {got[2]}):\n{node.tail()}")


def make_job(node, timeout=120):
    with open(PCAP_FILE, "rb") as f:
        body = f.read()
    rec = node.json("POST", f"/api/v1/tenants/{TENANT}/jobs/pcap-conversion", body, want=(202,))
    jid = rec["id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = node.json("GET", f"/api/v1/tenants/{TENANT}/jobs/{jid}")
        if rec["state"] == "succeeded":
            return jid, rec
        if rec["state"] in ("failed", "cancelled"):
            raise BenchError(f"job {jid} ended {rec['state']}: {rec.get('error')}")
        time.sleep(0.2)
    raise BenchError(f"job {jid} not succeeded after {timeout} s: {rec['state']}")


def reads(a, rows, cmds):
    node = Node(cpus=a.server_cpus, extra_env={
        # The sessions must outlive the whole section (default 600 s).
        "IPFIXSVC__COLLECTOR__IDLE_TIMEOUT_SECS": "3600"})
    cmds.append(f"node (reads): {' '.join(f'{k}={v}' for k, v in node.env.items() if k != 'IPFIXSVC__API__ADMIN_TOKEN')} "
                f"IPFIXSVC__API__ADMIN_TOKEN=$TOKEN RUST_LOG=info {shlex.join(node.cmd)}")
    create_tenant(node)
    t0 = time.time()
    socks, addrs, msg_len = open_sessions(node, a.sessions)
    n, size, errs = wait_sessions(node, a.sessions)
    print(f"reads: {a.sessions} TCP sessions from {addrs} source addresses (127.0.0.2..127.0.0.{1 + addrs}), "
          f"each sent one {msg_len}-byte IPFIX message, opened in {time.time() - t0:.1f} s; "
          f"GET /api/v1/tenants/{TENANT}/sessions?limit=1000 lists {n} ({size} bytes; errors {errs})", file=sys.stderr)
    rows.append(f"setup: {n} sessions of tenant {TENANT} listed before measuring; the whole listing (limit=1000) is {size} bytes, the default page 100 sessions")
    jid, rec = make_job(node)
    print(f"reads: job {jid} succeeded", file=sys.stderr)
    # The default page (100 sessions) and the whole listing in one page (limit=1000).
    targets = [("sessions page", f"/api/v1/tenants/{TENANT}/sessions"),
               ("job record", f"/api/v1/tenants/{TENANT}/jobs/{jid}"),
               ("sessions all", f"/api/v1/tenants/{TENANT}/sessions?limit=1000")]
    results = {}
    try:
        for label, path in targets:
            print(f"reads: {label} at {a.rate}/s for {a.duration} s", file=sys.stderr)
            results[(label, "fixed")] = steady(measure, node, path, a.duration, 50, a.rate / 50, a.hey_cpus, a.warm)
        if a.spread > 1:
            label, path = targets[1]
            print(f"reads: {label} at {a.rate}/s from {a.spread} hey processes, for {a.duration} s", file=sys.stderr)
            results[(label, "spread")] = steady(measure_spread, node, path, a.duration, a.rate, a.spread, a.hey_cpus)
        for label, path in targets:
            print(f"reads: {label}, most requests/s, for {a.duration} s", file=sys.stderr)
            results[(label, "max")] = steady(measure, node, path, a.duration, a.max_conc, None, a.hey_cpus, a.warm)
        n_after = listed(node)[0]
    finally:
        for s in socks:
            s.close()
        node.stop()
    pin = f"server cpus {a.server_cpus or 'any'}, hey cpus {a.hey_cpus or 'any'}"
    rows.append(f"reads at {a.rate:,}/s ({pin}); hey = client-side latency, srv = the server's took_us; "
                f"others = CPU of other processes on the machine meanwhile (100% = one core)")
    for label, _ in targets:
        r = results[(label, "fixed")]
        reached = "" if r["rps"] >= 0.98 * a.rate else "  RATE NOT REACHED (latencies understate queueing)"
        ok = "ok" if r["p99"] is not None and r["p99"] < 5 else "OVER 5 ms"
        rows.append(f"  {label:<15} p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms ({ok})  achieved {r['rps']:8.0f}/s  "
                    f"srv p50 {fmt_ms(r['srv_p50'])} p99 {fmt_ms(r['srv_p99'])}  "
                    f"server {r['server_cpu'] / r['requests'] * 1e4:.3f} CPU-s/10k req "
                    f"({100 * r['server_cpu'] / r['wall']:.0f}% of a core), others {100 * r['others'] / r['wall']:.0f}%{att(r)}{reached}")
        cmds.append(f"reads {label} fixed: {r['cmd']}")
    for label, _ in targets:
        r = results.get((label, "spread"))
        if r:
            reached = "" if r["rps"] >= 0.98 * a.rate else "  RATE NOT REACHED"
            ok = "ok" if r["p99"] < 5 else "OVER 5 ms"
            rows.append(f"  {label:<15} the same 5,000/s and 50 workers as {a.spread} staggered hey processes (smaller bursts, see commands):")
            rows.append(f"  {'':<15} p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms ({ok})  achieved {r['rps']:8.0f}/s  "
                        f"srv p50 {fmt_ms(r['srv_p50'])} p99 {fmt_ms(r['srv_p99'])}  "
                        f"server {r['server_cpu'] / r['requests'] * 1e4:.3f} CPU-s/10k req "
                        f"({100 * r['server_cpu'] / r['wall']:.0f}% of a core), others {100 * r['others'] / r['wall']:.0f}%{att(r)}{reached}")
            cmds.append(f"reads {label} fixed, spread: {r['cmd']}")
    rows.append(f"max req/s, server on {a.server_cpus or 'any'} / hey on {a.hey_cpus or 'any'} (hey -c {a.max_conc}, no -q)")
    for label, _ in targets:
        r = results[(label, "max")]
        rows.append(f"  {label:<15} {r['rps']:8.0f} req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                    f"server {100 * r['server_cpu'] / r['wall']:.0f}% of a core, hey {100 * r['hey_cpu'] / r['wall']:.0f}%, "
                    f"others {100 * r['others'] / r['wall']:.0f}%{att(r)}  "
                    f"({r['size']:.0f} bytes/answer)")
        cmds.append(f"reads {label} max: {r['cmd']}")
    bad = sum(r["bad"] for r in results.values())
    rows.append(f"  sessions listed after the runs: {n_after}; non-200 answers or errors over all runs: {bad}")


def att(r):
    n = r.get("attempts_all", 1)
    return "" if n == 1 else f" [least disturbed of {n} attempts]"


def fmt_ms(v):
    return "   n/a" if v is None else f"{v:6.2f}"


# ---------------------------------------------------------------- upload

def pcap_parts(target_block=4 << 20):
    """http.pcap's 24-byte header, and a block of its whole packet records repeated."""
    with open(PCAP_FILE, "rb") as f:
        data = f.read()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise BenchError(f"{PCAP_FILE}: expected a little-endian microsecond pcap")
    header, off, recs = data[:24], 24, []
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        if off + 16 + incl > len(data):
            break
        recs.append(data[off:off + 16 + incl])
        off += 16 + incl
    one = b"".join(recs)
    return header, one * max(1, target_block // len(one)), len(recs)


def df(path):
    out = subprocess.run(["df", "-T", "-B1", path], capture_output=True, text=True, check=True).stdout.splitlines()[1].split()
    return out[1], int(out[4])   # filesystem type, bytes available


def meminfo(key):
    with open("/proc/meminfo") as f:
        for l in f:
            if l.startswith(key + ":"):
                return int(l.split()[1])
    return 0


def proc_io(pid):
    """/proc/PID/io: syscr, syscw (read and write system calls), rchar, wchar (their bytes)."""
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (l.split(": ") for l in f)}


def thread_cpu(pid):
    """CPU-seconds per thread name of a process (live threads only)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        fields = st.rsplit(")", 1)[1].split()
        out.setdefault(name, [0.0, 0])
        out[name][0] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[name][1] += 1
    return out


class RssSampler(threading.Thread):
    def __init__(self, pid, every=0.05):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.samples = pid, every, 0, 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
                self.samples += 1
            except OSError:
                return
            self.halt.wait(self.every)


def upload(a, rows, cmds):
    header, block, nrec = pcap_parts()
    k = math.ceil((a.upload_bytes - len(header)) / len(block))
    total = len(header) + k * len(block)
    fstype, avail = df("/tmp")
    if avail < total + (2 << 30):
        raise BenchError(f"/tmp has {avail / 1e9:.1f} GB free: not enough for a {total / 1e9:.1f} GB upload and a margin")
    node = Node(extra_env={"IPFIXSVC__API__MAX_UPLOAD_BYTES": "4294967296"})
    cmds.append(f"node (upload): {' '.join(f'{k}={v}' for k, v in node.env.items() if k != 'IPFIXSVC__API__ADMIN_TOKEN')} "
                f"IPFIXSVC__API__ADMIN_TOKEN=$TOKEN RUST_LOG=info {shlex.join(node.cmd)}")
    try:
        create_tenant(node)
        wait_idle("upload")
        before = rss_kib(node.pid)
        sampler = RssSampler(node.pid)
        sampler.start()
        path = f"/api/v1/tenants/{TENANT}/jobs/pcap-conversion"
        conn = http.client.HTTPConnection(*node.api, timeout=300)
        conn.connect()
        dirty0 = meminfo("Dirty")
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {node.token}")
        conn.putheader("Content-Type", "application/vnd.tcpdump.pcap")
        conn.putheader("Content-Length", str(total))
        cpu0, ccpu0, b0 = cpu_seconds(node.pid), time.process_time(), busy_cpu()
        io0, th0 = proc_io(node.pid), thread_cpu(node.pid)
        t0 = time.perf_counter()
        conn.endheaders(header)
        view = memoryview(block)
        for _ in range(k):
            conn.sock.sendall(view)
        resp = conn.getresponse()
        t1 = time.perf_counter()
        cpu, ccpu = cpu_seconds(node.pid) - cpu0, time.process_time() - ccpu0
        others = busy_cpu() - b0 - cpu - ccpu
        io1, th1 = proc_io(node.pid), thread_cpu(node.pid)
        dirty1 = meminfo("Dirty")
        body = resp.read()
        conn.close()
        sampler.halt.set()
        sampler.join()
        peak = max(sampler.peak, before)
        if resp.status != 202:
            raise BenchError(f"upload: {resp.status}: {body[:500]!r}")
        rec = json.loads(body)
        st, _, cbody = node.request("DELETE", f"/api/v1/tenants/{TENANT}/jobs/{rec['id']}")
        stored = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(node.storage, "uploads")) for f in fs]
        # Wait for the cancel to land before the node stops (its drain would do it anyway).
        deadline = time.time() + 30
        state = rec["state"]
        while time.time() < deadline and state not in ("cancelled", "succeeded", "failed"):
            state = node.json("GET", f"/api/v1/tenants/{TENANT}/jobs/{rec['id']}")["state"]
            time.sleep(0.2)
    finally:
        node.stop()
    wall = t1 - t0
    mbs = total / wall / 1e6
    rows.append(f"upload {total / 1e9:.3f} GB ({total} bytes, {nrec}-record block of http.pcap x {k}) to {fstype} /tmp: "
                f"{mbs:.0f} MB/s ({wall:.2f} s first byte to 202; MB = 10^6 bytes)  "
                f"{'ok' if mbs >= 500 else 'UNDER 500 MB/s'}")
    rows.append(f"  RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, growth {(peak - before) / 1024:+.1f} MiB "
                f"({'ok' if peak - before < 64 * 1024 else 'OVER 64 MiB'}; {sampler.samples} samples every 50 ms)")
    rows.append(f"  server CPU {cpu:.2f} s ({100 * cpu / wall:.0f}% of a core), client (this script) CPU {ccpu:.2f} s "
                f"({100 * ccpu / wall:.0f}%), others {100 * others / wall:.0f}%; Dirty page cache {dirty0 / 1024:.0f} -> {dirty1 / 1024:.0f} MiB; "
                f"stored upload {stored} bytes; DELETE right after the 202: {st}, job ended {state}")
    io = {k: io1[k] - io0.get(k, 0) for k in io1}
    threads = sorted(((n, v[0] - th0.get(n, [0.0])[0], v[1]) for n, v in th1.items()), key=lambda t: -t[1])
    rows.append(f"  server during it (/proc/PID/io): {io['syscw']} write calls of {io['wchar'] / max(io['syscw'], 1) / 1024:.1f} KiB "
                f"on average ({io['wchar'] / 1e6:.0f} MB), {io['syscr']} read calls ({io['rchar'] / 1e6:.0f} MB); "
                f"CPU by thread name: " + ", ".join(f"{n} x{c} {t:.2f} s" for n, t, c in threads if t >= 0.01))
    cmds.append(f"upload: http.client POST {path}, Content-Length {total}, body sent with socket.sendall of a "
                f"{len(block)}-byte block x {k} (this script, --upload-bytes {a.upload_bytes})")
    if mbs < 500:
        rows.append("  " + disk_baseline(header, block, k))


def disk_baseline(header, block, k):
    """The same bytes written by this process to a file in /tmp (write + close, no fsync)."""
    d = tempfile.mkdtemp(prefix="ipfixsvc-api-bench-disk-", dir="/tmp")
    p = os.path.join(d, "x.pcap")
    try:
        t0 = time.perf_counter()
        with open(p, "wb", buffering=0) as f:
            f.write(header)
            for _ in range(k):
                f.write(block)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)
    total = len(header) + k * len(block)
    return f"baseline, this script writing the same bytes to a file in /tmp: {total / wall / 1e6:.0f} MB/s ({wall:.2f} s)"


# ---------------------------------------------------------------- collector

def collector_file():
    path = os.path.join(OUT, "collector-fixed-200000.ipfix")
    if not os.path.exists(path):
        gen = os.path.join(SHARED, "bench", "gen_ipfix.py")
        subprocess.run([sys.executable, gen, "--kind", "fixed", "--messages", "200000",
                        "--records-per-message", "23", "--out", path], check=True, stdout=subprocess.DEVNULL)
    return path


def collector_run(path, want, sessions, loop, polled, poll_path="/api/v1/sessions", duration_cap=600):
    wait_idle("collector run")
    node = Node(roles="collector,api")
    try:
        hey = None
        if polled:
            cmd = hey_cmd(node.url(poll_path), node.token, duration_cap, 50, 20)
            hey = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(2)   # polling at full rate before the first byte
            if hey.poll() is not None:
                raise BenchError(f"hey exited at once: {hey.communicate()[0][-1000:]}")
        node.new_lines()
        cpu0, b0, cs0 = cpu_seconds(node.pid), busy_cpu(), ctx_switches(node.pid)
        send = [BIN, "send", path, "--to", "%s:%d" % node.tcp, "--loop", str(loop)]
        t0 = time.time()
        senders = [spawn(send, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(sessions)]
        ended = []
        deadline = t0 + duration_cap
        while len(ended) < sessions:
            if time.time() > deadline:
                raise BenchError(f"only {len(ended)} of {sessions} sessions ended within {duration_cap} s")
            if node.proc.poll() is not None:
                raise BenchError(f"the node exited {node.proc.returncode}:\n{node.tail()}")
            failed = [p.returncode for p in senders if p.poll() not in (None, 0)]
            if failed:
                raise BenchError(f"ipfixsvc send exited {failed}: {shlex.join(send)}")
            ended += [l for l in node.new_lines() if "exporter session ended" in l]
            time.sleep(0.005)
        t1 = time.time()
        cpu, busy, cs = cpu_seconds(node.pid) - cpu0, busy_cpu() - b0, ctx_switches(node.pid) - cs0
        for p in senders:
            p.wait(timeout=60)
        poll = None
        if hey is not None:
            hey.send_signal(signal.SIGINT)   # hey stops and prints its report
            out, _ = hey.communicate(timeout=30)
            poll = parse_hey(out)
            poll["cmd"] = shown(cmd, node.token)
    finally:
        node.stop()
    got = sum(records_of(l) for l in ended)
    if got != want * sessions:
        print(f"WARNING: decoded {got} of {want * sessions} records", file=sys.stderr)
    return {"records": got, "wall": t1 - t0, "rps": got / (t1 - t0), "cpu": cpu, "busy": busy, "ctxsw": cs, "poll": poll, "send": shlex.join(send)}


def collector(a, rows, cmds):
    path = collector_file()
    want = dump_count(path) * a.collector_loop
    runs = {False: [], True: []}
    for r in range(a.rounds):
        for polled in (False, True):
            x = collector_run(path, want, a.collector_sessions, a.collector_loop, polled, a.poll_path)
            runs[polled].append(x)
            extra = ""
            if x["poll"]:
                p = x["poll"]
                extra = f", API polled at {p['rps']:.0f}/s (p99 {p['p99']:.2f} ms, non-200 {p['requests'] - p['codes'].get(200, 0)})"
            print(f"collector round {r + 1} {'polled' if polled else 'alone '}: {x['rps'] / 1e6:.2f}M rec/s "
                  f"({x['records']} records in {x['wall']:.2f} s, collector {x['cpu']:.2f} CPU-s, "
                  f"machine busy {100 * x['busy'] / x['wall']:.0f}% of 200%, collector context switches "
                  f"{x['ctxsw'] / x['wall'] / 1000:.0f}k/s){extra}", file=sys.stderr)
    alone = statistics.median(x["rps"] for x in runs[False])
    polled = statistics.median(x["rps"] for x in runs[True])
    ratio = polled / alone
    each = lambda xs: " ".join(f"{x['rps'] / 1e6:.2f}M ({x['cpu']:.2f} CPU-s, {x['ctxsw'] / x['wall'] / 1000:.0f}k cs/s, "
                               f"machine {100 * x['busy'] / x['wall']:.0f}%)" for x in xs)
    rows.append(f"collector TCP rec/s, {a.collector_sessions} session(s), {want} records each "
                f"(medians of {a.rounds}, A B A B): alone {alone / 1e6:.2f}M, API polled at 1,000/s ({a.poll_path}) {polled / 1e6:.2f}M, "
                f"ratio B/A {ratio:.3f} ({'within 5%' if ratio >= 0.95 else 'MORE THAN 5% SLOWER'})")
    rows.append("  runs (collector CPU-s, its context switches/s, machine busy of 200%):")
    rows.append(f"        alone  {each(runs[False])}")
    rows.append(f"        polled {each(runs[True])}; achieved poll rates "
                + " ".join(f"{x['poll']['rps']:.0f}/s" for x in runs[True]))
    cmds.append(f"collector: node roles collector,api, output.format=count; {a.collector_sessions} x "
                f"`{runs[False][0]['send']}` (port varies)")
    cmds.append(f"collector polling: {runs[True][0]['poll']['cmd']} (started 2 s before the send, SIGINT after the last session ended)")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s hey runs, 200 MB upload, loop 1, 1 round")
    ap.add_argument("--only", default="reads,upload,collector", help="comma-separated sections")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=5000, help="fixed rate for the reads, requests/s (50 hey workers)")
    ap.add_argument("--duration", type=float, default=10, help="seconds of each measured hey run")
    ap.add_argument("--warm", type=float, default=2, help="seconds of unmeasured warm-up before each hey run")
    ap.add_argument("--max-conc", type=int, default=64)
    ap.add_argument("--spread", type=int, default=10, help="also the job record at the fixed rate from this many "
                    "staggered hey processes (50/N workers each; 0 or 1: not run)")
    ap.add_argument("--server-cpus", default="0", help="taskset -c list for the reads node ('' = not pinned)")
    ap.add_argument("--hey-cpus", default="1", help="taskset -c list for hey in the reads ('' = not pinned)")
    ap.add_argument("--upload-bytes", type=int, default=2_000_000_000)
    ap.add_argument("--collector-sessions", type=int, default=1)
    ap.add_argument("--collector-loop", type=int, default=4, help="ipfixsvc send --loop")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--poll-path", default="/api/v1/sessions", help="what hey polls during the collector runs")
    ap.add_argument("--retries", type=int, default=2, help="repeat a hey measurement up to this many times while "
                    "other processes used > 25%% of a core during it; the least disturbed is reported")
    ap.add_argument("--wait-idle", type=float, default=300, help="before each measurement, wait up to this many s "
                    "for other processes to use < 25%% of a core (shared machine); 0: check once")
    a = ap.parse_args()
    a.server_cpus = a.server_cpus or None
    a.hey_cpus = a.hey_cpus or None
    WAIT_IDLE[0] = a.wait_idle
    RETRIES[0] = a.retries
    if a.quick:
        a.duration, a.warm, a.upload_bytes, a.collector_loop, a.rounds = 2, 0.5, 200_000_000, 1, 1
    only = set(a.only.split(","))
    if only - {"reads", "upload", "collector"}:
        ap.error(f"--only: unknown sections {only - {'reads', 'upload', 'collector'}}")
    for tool in ("hey", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install hey / util-linux)")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} not found: build it with cargo build --release")
    os.makedirs(OUT, exist_ok=True)
    # Ctrl-C raises KeyboardInterrupt even when started in the background (where SIGINT may be
    # inherited as ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(cleanup)

    started = time.time()
    bin_mtime = datetime.datetime.fromtimestamp(os.path.getmtime(BIN))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rows, cmds = [], []
    try:
        if "reads" in only:
            reads(a, rows, cmds)
        if "upload" in only:
            upload(a, rows, cmds)
        if "collector" in only:
            collector(a, rows, cmds)
    except BenchError as e:
        cleanup()
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        cleanup()
        sys.exit("interrupted")
    finally:
        cleanup()
    fs = df("/tmp")[0]
    head = [f"ipfixsvc HTTP API benchmark, {stamp}, {os.cpu_count()} cores, binary {BIN} "
            f"(mtime {bin_mtime:%Y-%m-%d %H:%M}), /tmp is {fs}",
            f"command: {shlex.join([sys.executable] + sys.argv)}   wall {time.time() - started:.0f} s", ""]
    if NOISY:
        rows.append("")
        rows.append("started on a busy machine (other processes' load): " + "; ".join(NOISY))
    text = "\n".join(head + rows + ["", "commands:"] + ["  " + c for c in cmds]) + "\n"
    print(text)
    out = os.path.join(OUT, f"api-{stamp}.txt")
    with open(out, "w") as f:
        f.write(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
