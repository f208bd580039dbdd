#!/usr/bin/env python3
"""Shared-template and cluster benchmark (release build, loopback only):

  python3 bench/cluster.py [--messages 200000] [--no-build]

  * decoded records/s over TCP (1 session) with templates in memory vs shared through a real
    redis-server: the hot path never waits on Redis, so the two should be within a few percent;
  * failover latency: an exporter sent its templates to node A; it connects to node B and sends one
    data message: time from the first byte sent to B until B has written the decoded record;
  * cluster RPC round trip (median, p99) between two processes: `ipfixsvc cluster ping`.
Standard library only. Needs redis-server (Debian package).
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import collector as cb  # noqa: E402  (same folder: Serve, dump_count, ...)

ROOT = cb.ROOT
BIN = cb.BIN


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                return
            except OSError:
                time.sleep(0.02)
        sys.exit("redis-server did not start")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def tcp_rate(path, records, env):
    s = cb.Serve(env)
    t0 = time.time()
    subprocess.run([BIN, "send", path, "--to", "%s:%d" % s.tcp], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ended = s.wait_ended(1)
    wall = time.time() - t0
    got = sum(cb.records_of(l) for l in ended)
    s.stop()
    if got != records:
        print(f"WARNING: decoded {got} of {records}", file=sys.stderr)
    return got / wall


def build_messages():
    """The generator's first message (template set and data) and its second (data only)."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "small.ipfix")
    gen = os.path.join(ROOT, "..", "shared", "bench", "gen_ipfix.py")
    subprocess.run([sys.executable, gen, "--kind", "fixed", "--messages", "3", "--records-per-message", "10",
                    "--out", path], check=True, stdout=subprocess.DEVNULL)
    data = open(path, "rb").read()
    msgs = []
    at = 0
    while at < len(data):
        n = int.from_bytes(data[at + 2:at + 4], "big")
        msgs.append(data[at:at + n])
        at += n
    return msgs


def failover_latency(redis, runs=20):
    env = {"IPFIXSVC__REDIS__URL": redis.url, "IPFIXSVC__OUTPUT__FORMAT": "ndjson"}
    out_a = tempfile.mktemp(suffix=".ndjson")
    out_b = tempfile.mktemp(suffix=".ndjson")
    a = cb.Serve(dict(env, IPFIXSVC__NODE__NAME="bench-a", IPFIXSVC__OUTPUT__PATH=out_a))
    b = cb.Serve(dict(env, IPFIXSVC__NODE__NAME="bench-b", IPFIXSVC__OUTPUT__PATH=out_b))
    msgs = build_messages()
    first, later = msgs[0], msgs[1]
    samples = []
    for i in range(runs):
        # Each run is a new exporter: a new Observation Domain (bytes 12..16) of the same address.
        dom = (1000 + i).to_bytes(4, "big")
        t_msg = first[:12] + dom + first[16:]
        d_msg = later[:12] + dom + later[16:]
        with socket.create_connection(a.tcp) as s:
            s.sendall(t_msg)
        time.sleep(0.3)  # A writes the templates through to Redis
        before = os.path.getsize(out_b) if os.path.exists(out_b) else 0
        with socket.create_connection(b.tcp) as s:
            t0 = time.perf_counter()
            s.sendall(d_msg)
            while (os.path.getsize(out_b) if os.path.exists(out_b) else 0) == before:
                if time.perf_counter() - t0 > 5:
                    sys.exit("B never decoded the moved exporter's data")
                time.sleep(0.0002)
            samples.append(time.perf_counter() - t0)
    a.stop()
    b.stop()
    samples.sort()
    return samples[len(samples) // 2], samples[-1]


def rpc_round_trip():
    cookie = "bench-cookie-" + str(os.getpid())
    pa = free_port()
    a = cb.Serve({"IPFIXSVC__NODE__NAME": "rpc-a", "IPFIXSVC__CLUSTER__COOKIE": cookie,
                  "IPFIXSVC__CLUSTER__LISTEN": f"127.0.0.1:{pa}"})
    out = subprocess.run([BIN, "cluster", "ping", "--count", "2000", "--seed", f"127.0.0.1:{pa}",
                          "--cookie", cookie], capture_output=True, text=True)
    a.stop()
    return out.stdout.strip() or out.stderr.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    path = os.path.join(cb.OUT, f"collector-fixed-{a.messages}.ipfix")
    os.makedirs(cb.OUT, exist_ok=True)
    if not os.path.exists(path):
        gen = os.path.join(ROOT, "..", "shared", "bench", "gen_ipfix.py")
        subprocess.run([sys.executable, gen, "--kind", "fixed", "--messages", str(a.messages),
                        "--records-per-message", "23", "--out", path], check=True, stdout=subprocess.DEVNULL)
    records = cb.dump_count(path)
    redis = Redis()
    try:
        mem = [tcp_rate(path, records, {}) for _ in range(3)]
        red = [tcp_rate(path, records, {"IPFIXSVC__REDIS__URL": redis.url}) for _ in range(3)]
        mem.sort()
        red.sort()
        print(f"TCP, 1 session, {records} records (median of 3): in-memory templates {mem[1] / 1e6:.2f}M rec/s, "
              f"Redis {red[1] / 1e6:.2f}M rec/s ({(red[1] / mem[1] - 1) * 100:+.1f}%)")
        med, worst = failover_latency(redis)
        print(f"failover, first decoded record on the new node: median {med * 1000:.2f} ms, worst {worst * 1000:.2f} ms (20 runs)")
    finally:
        redis.stop()
    print(f"cluster RPC round trip: {rpc_round_trip()}")


if __name__ == "__main__":
    main()
