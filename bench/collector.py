#!/usr/bin/env python3
"""Collector benchmark: `ipfixsvc serve` (release, output counted, not printed) fed by
`ipfixsvc send` over loopback.

  python3 bench/collector.py [--messages 200000] [--udp-rate 1000000] [--idle 5000] [--no-build]

Reports, for one run on this machine:
  * TCP, 1 and 4 concurrent sessions: records/s from the first byte sent to the last record
    decoded (wall), and records per CPU-second of the collector process;
  * memory per idle TCP session: the collector's RSS growth over N idle connections, divided by N;
  * UDP side by side with nfcapd (Debian package nfdump) receiving the same file at the same paced
    rate: records received and records per CPU-second of each collector, and their ratio;
  * IPFIX over TLS versus plain TCP, 1 session, interleaved (certificates made with openssl).
Standard library only. Targets only loopback.
"""

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ipfixsvc")
OUT = os.path.join(ROOT, "bench", "out")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(n, soft), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Serve:
    """A collector process; its log lines are collected as they come."""

    def __init__(self, extra_env):
        env = dict(os.environ)
        env.update({
            "IPFIXSVC__NODE__ROLES": "collector",
            "IPFIXSVC__COLLECTOR__TCP_LISTEN": "127.0.0.1:0",
            "IPFIXSVC__COLLECTOR__UDP_LISTEN": "127.0.0.1:0",
            "IPFIXSVC__OUTPUT__FORMAT": "count",
            "RUST_LOG": "info",
        })
        env.update(extra_env)
        self.proc = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: raise_nofile(65536))
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        self.tcp = self._addr("tcp=")
        self.udp = self._addr("udp=")

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _addr(self, key):
        deadline = time.time() + 20
        while time.time() < deadline:
            for line in self.lines:
                m = re.search(key + r"([0-9.]+):(\d+)", line)
                if m:
                    return (m.group(1), int(m.group(2)))
            time.sleep(0.02)
        sys.exit(f"collector did not report {key}: {self.lines}")

    def ended(self):
        return [l for l in self.lines if "exporter session ended" in l]

    def wait_ended(self, n, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            e = self.ended()
            if len(e) >= n:
                return e
            time.sleep(0.005)
        sys.exit(f"only {len(self.ended())} of {n} sessions ended")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def udp_rcvbuf_errors():
    """Datagrams the kernel dropped because a socket's receive buffer was full (all sockets)."""
    with open("/proc/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def records_of(line):
    m = re.search(r"records=(\d+)", line)
    return int(m.group(1)) if m else 0


def dump_count(path):
    out = subprocess.run([BIN, "dump", "--count", path], capture_output=True, text=True, check=True)
    return int(re.search(r'"dataRecords":(\d+)', out.stdout).group(1))


def tcp_run(path, records, sessions):
    s = Serve({})
    cpu0 = cpu_seconds(s.proc.pid)
    t0 = time.time()
    senders = [subprocess.Popen([BIN, "send", path, "--to", "%s:%d" % s.tcp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(sessions)]
    ended = s.wait_ended(sessions)
    t1 = time.time()
    cpu = cpu_seconds(s.proc.pid) - cpu0
    for p in senders:
        p.wait()
    got = sum(records_of(l) for l in ended)
    s.stop()
    want = records * sessions
    if got != want:
        print(f"WARNING: TCP x{sessions}: decoded {got} of {want} records", file=sys.stderr)
    return got, t1 - t0, cpu


def certificates(d):
    """A CA and a server certificate for 127.0.0.1, made with the openssl command line."""
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=bench-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=node")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "node.pem", "-days", "1", "-extfile", "ext.cnf")
    return [os.path.join(d, f) for f in ("node.pem", "node.key", "ca.pem")]


def tls_vs_tcp(path, records, rounds=3):
    """Medians of records/s over TLS and over TCP, 1 session, send to last record decoded."""
    d = tempfile.mkdtemp(prefix="ipfixsvc-bench-tls-")
    cert, key, ca = certificates(d)
    tls, tcp = [], []
    for _ in range(rounds):
        got, wall, _ = tcp_run(path, records, 1)
        tcp.append(got / wall)
        s = Serve({"IPFIXSVC__COLLECTOR__TLS_LISTEN": "127.0.0.1:0",
                   "IPFIXSVC__COLLECTOR__TLS_CERT": cert, "IPFIXSVC__COLLECTOR__TLS_KEY": key})
        at = s._addr("tls=")
        t0 = time.time()
        subprocess.run([BIN, "send", path, "--to", "%s:%d" % at, "--tls", "--ca", ca],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ended = s.wait_ended(1)
        tls.append(sum(records_of(l) for l in ended) / (time.time() - t0))
        s.stop()
    shutil.rmtree(d, ignore_errors=True)
    return statistics.median(tls), statistics.median(tcp)


def idle_memory(n):
    raise_nofile(n + 1024)
    # Idle connections from one address that never send a message: lift the per-address cap and
    # the first-message deadline that would close them.
    s = Serve({"IPFIXSVC__COLLECTOR__IDLE_TIMEOUT_SECS": "600",
               "IPFIXSVC__COLLECTOR__MAX_SESSIONS_PER_EXPORTER": str(n + 1),
               "IPFIXSVC__COLLECTOR__FIRST_MESSAGE_SECS": "600"})
    time.sleep(0.5)
    before = rss_kib(s.proc.pid)
    socks = []
    for _ in range(n):
        c = socket.create_connection(s.tcp)
        socks.append(c)
    # Let every session start (one actor and one reader task each).
    time.sleep(3)
    after = rss_kib(s.proc.pid)
    for c in socks:
        c.close()
    s.stop()
    return before, after


def udp_ipfixsvc(path, rate):
    s = Serve({"IPFIXSVC__COLLECTOR__IDLE_TIMEOUT_SECS": "2"})
    cpu0 = cpu_seconds(s.proc.pid)
    k0 = udp_rcvbuf_errors()
    subprocess.run([BIN, "send", path, "--udp", "--rate", str(rate), "--to", "%s:%d" % s.udp],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ended = s.wait_ended(1, timeout=60)
    cpu = cpu_seconds(s.proc.pid) - cpu0
    got = sum(records_of(l) for l in ended)
    s.stop()
    return got, cpu, udp_rcvbuf_errors() - k0


def udp_nfcapd(path, rate):
    if not shutil.which("nfcapd"):
        return None
    d = tempfile.mkdtemp(prefix="nfcapd-")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", d, "-t", "3600"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    cpu0 = cpu_seconds(p.pid)
    k0 = udp_rcvbuf_errors()
    subprocess.run([BIN, "send", path, "--udp", "--rate", str(rate), "--to", f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    cpu = cpu_seconds(p.pid) - cpu0
    kernel = udp_rcvbuf_errors() - k0
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    out = subprocess.run(["nfdump", "-R", d, "-q", "-o", "fmt:%pkt"], capture_output=True, text=True)
    got = sum(1 for l in out.stdout.splitlines() if l.strip())
    shutil.rmtree(d, ignore_errors=True)
    return got, cpu, kernel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--udp-rate", type=int, default=1000000, help="records/s for the UDP runs")
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    path = os.path.join(OUT, f"collector-fixed-{a.messages}.ipfix")
    if not os.path.exists(path):
        gen = os.path.join(ROOT, "..", "shared", "bench", "gen_ipfix.py")
        subprocess.run([sys.executable, gen, "--kind", "fixed", "--messages", str(a.messages),
                        "--records-per-message", "23", "--out", path], check=True, stdout=subprocess.DEVNULL)
    records = dump_count(path)
    print(f"file: {path} ({records} records, {os.path.getsize(path)} bytes)")
    print()
    print("TCP (collector decodes every field, output counted)")
    print(f"{'sessions':>8} {'records':>10} {'wall s':>8} {'rec/s wall':>12} {'cpu s':>7} {'rec/cpu-s':>12}")
    for n in (1, 4):
        got, wall, cpu = tcp_run(path, records, n)
        print(f"{n:>8} {got:>10} {wall:>8.3f} {got / wall / 1e6:>11.2f}M {cpu:>7.3f} {got / max(cpu, 1e-9) / 1e6:>11.2f}M")
    print()
    before, after = idle_memory(a.idle)
    print(f"idle TCP sessions: {a.idle}: RSS {before} KiB -> {after} KiB, "
          f"{(after - before) / a.idle:.1f} KiB per session")
    print()
    print(f"UDP at {a.udp_rate} records/s (paced by ipfixsvc send), same file")
    got, cpu, kernel = udp_ipfixsvc(path, a.udp_rate)
    ours = got / max(cpu, 1e-9)
    print(f"  ipfixsvc: {got} of {records} records received, {cpu:.3f} cpu s, {ours / 1e6:.2f}M rec/cpu-s, "
          f"{kernel} datagrams dropped by the kernel (receive buffer full)")
    nf = udp_nfcapd(path, a.udp_rate)
    if nf is None:
        print("  nfcapd: not installed (apt-get install nfdump)")
    else:
        ngot, ncpu, nkernel = nf
        theirs = ngot / max(ncpu, 1e-9)
        print(f"  nfcapd:   {ngot} of {records} records received, {ncpu:.3f} cpu s, {theirs / 1e6:.2f}M rec/cpu-s, "
              f"{nkernel} datagrams dropped by the kernel")
        print(f"  ratio ipfixsvc/nfcapd (records per CPU-second): {ours / max(theirs, 1e-9):.2f}")
    if shutil.which("openssl"):
        print()
        tls, tcp = tls_vs_tcp(path, records)
        print(f"TLS vs TCP, 1 session (medians of 3 interleaved): {tls / 1e6:.2f}M vs {tcp / 1e6:.2f}M records/s"
              f" (TLS {tls / tcp:.2f} of TCP)")


if __name__ == "__main__":
    main()
