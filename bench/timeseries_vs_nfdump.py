#!/usr/bin/env python3
"""`ipfixsvc timeseries` side by side with `nfdump -s dstport/bytes` on the same flows.

  python3 bench/timeseries_vs_nfdump.py [--messages 200000] [--rate 1000000] [--runs 3] [--no-build]

The flows are `../shared/bench/gen_ipfix.py --kind fixed` (bench/out/collector-fixed-N.ipfix).
nfcapd (Debian package nfdump) collects them from `ipfixsvc send --udp` at a paced rate into its
own files; then, each timed as a whole process (wall and CPU, medians of --runs, interleaved):
  nfdump     -R DIR -s dstport/bytes -n 10   (top 10 destination ports by bytes over everything)
  ipfixsvc   timeseries FILE --interval 60 --by destinationTransportPort --top 10 -o OUT.json
             (the same top 10 and `other`, and a series per minute of each)
Both read every flow; nfdump reads its own format, ipfixsvc the IPFIX file. Records per second
are the flows each read divided by its wall time; the ratio is ipfixsvc / nfdump. The flows
nfcapd received are counted against those sent (UDP may lose some at high rates). Loopback only.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import collector  # noqa: E402  (the file, dump_count, BIN, ROOT)


def timed(cmd):
    """Wall seconds, CPU seconds (user + system of the process), standard output."""
    t0 = time.time()
    r0 = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r1 = os.times()
    return (time.time() - t0,
            (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system),
            out.stdout)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collect(path, rate, work):
    """nfcapd receives the file over UDP; the folder holding its files."""
    port = free_udp_port()
    d = os.path.join(work, "nfcapd")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    cap = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    subprocess.run([collector.BIN, "send", path, "--udp", "--rate", str(rate),
                    "--to", f"127.0.0.1:{port}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    cap.send_signal(signal.SIGTERM)
    cap.wait(timeout=60)
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--rate", type=int, default=1000000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not shutil.which("nfcapd") or not shutil.which("nfdump"):
        sys.exit("nfcapd and nfdump are needed: apt-get install nfdump")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=collector.ROOT, check=True)
    path = os.path.join(collector.OUT, f"collector-fixed-{a.messages}.ipfix")
    if not os.path.exists(path):
        os.makedirs(collector.OUT, exist_ok=True)
        gen = os.path.join(collector.ROOT, "..", "shared", "bench", "gen_ipfix.py")
        subprocess.run([sys.executable, gen, "--kind", "fixed", "--messages", str(a.messages),
                        "--records-per-message", "23", "--out", path], check=True,
                       stdout=subprocess.DEVNULL)
    records = collector.dump_count(path)
    work = tempfile.mkdtemp(prefix="ipfixsvc-bench-ts-")
    d = collect(path, a.rate, work)
    # How many flows nfcapd stored (`-I`: the files' statistics).
    _, _, count_out = timed(["nfdump", "-R", d, "-I"])
    got = 0
    for line in count_out.splitlines():
        if line.startswith("Flows:"):
            got = int(line.split()[1])
    print(f"file {path}: {records} flows; nfcapd received {got} ({records - got} lost over UDP at "
          f"{a.rate}/s)")
    out = os.path.join(work, "ts.json")
    ours, theirs = [], []
    for r in range(a.runs):
        order = ("ours", "nfdump") if r % 2 == 0 else ("nfdump", "ours")
        for who in order:
            if who == "ours":
                wall, cpu, _ = timed([collector.BIN, "timeseries", path, "--interval", "60", "--by",
                                      "destinationTransportPort", "--top", "10", "-o", out])
                ours.append((wall, cpu))
            else:
                wall, cpu, text = timed(["nfdump", "-R", d, "-q", "-s", "dstport/bytes", "-n", "10"])
                theirs.append((wall, cpu))
    with open(out) as f:
        doc = json.load(f)
    top = [s["key"] for s in doc["series"]][:10]
    mw, mc = statistics.median(w for w, _ in ours), statistics.median(c for _, c in ours)
    tw, tc = statistics.median(w for w, _ in theirs), statistics.median(c for _, c in theirs)
    print(f"{'':>22} {'wall s':>8} {'cpu s':>7} {'flows/s':>10}")
    print(f"{'ipfixsvc timeseries':>22} {mw:>8.3f} {mc:>7.3f} {records / mw / 1e6:>9.2f}M")
    print(f"{'nfdump -s dstport':>22} {tw:>8.3f} {tc:>7.3f} {got / tw / 1e6:>9.2f}M")
    print(f"ratio (flows/s, ipfixsvc / nfdump): {(records / mw) / (got / tw):.2f}")
    print(f"ipfixsvc's top ports: {top}")
    print(f"nfdump's top ports:\n{text}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
