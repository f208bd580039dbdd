#!/usr/bin/env python3
"""The Kubernetes manifests against the binary they deploy (run by tests/manifests.rs with the
test virtual environment's Python, which has PyYAML through kubernetes-validate).

  check.py --root REPO --bin IPFIXSVC --openapi OPENAPI.json [--rendered RENDERED.yaml]

Checks, each failure printed and counted (exit 1 when any):
  * base/kustomization.yaml lists every YAML file of base/, and only files that exist;
  * each pod's environment (values, Secret keys, the downward API's fields with sample values,
    $(VAR) expansions) with the ConfigMap's config.toml passes `ipfixsvc serve --check`;
  * container ports are the ports the effective configuration listens on, by name;
  * every Service's targetPort names a port of the pods it selects;
  * probe paths are paths of the API's OpenAPI document, on pods that run the api role (whose
    server answers them);
  * terminationGracePeriodSeconds covers shutdown.grace_secs plus the preStop pause;
  * the Dockerfile exposes those ports, runs as a numeric non-root user, and builds with the
    toolchain Cargo.toml asks for.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def port_of(listen):
    return int(listen.rsplit(":", 1)[1]) if listen else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--openapi", required=True)
    ap.add_argument("--rendered")
    a = ap.parse_args()
    base = os.path.join(a.root, "manifests", "base")

    # The kustomization and the files.
    kust = docs(os.path.join(base, "kustomization.yaml"))[0]
    listed = set(kust.get("resources", []))
    present = {f for f in os.listdir(base) if f.endswith(".yaml") and f != "kustomization.yaml"}
    for f in sorted(present - listed):
        fail(f"base/{f} is not in base/kustomization.yaml")
    for f in sorted(listed - present):
        fail(f"base/kustomization.yaml lists {f}, which does not exist")

    objs = []
    if a.rendered:
        objs = docs(a.rendered)
    else:
        for f in sorted(listed & present):
            objs += docs(os.path.join(base, f))
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)

    config_text = next(o for o in by_kind["ConfigMap"] if o["metadata"]["name"] == "ipfixsvc-config")[
        "data"]["config.toml"]
    secret = next(o for o in by_kind["Secret"] if o["metadata"]["name"] == "ipfixsvc")
    secret_values = dict(secret.get("stringData", {}))
    with open(os.path.join(a.openapi)) as f:
        api_paths = set(json.load(f)["paths"].keys())

    workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
    ours = [w for w in workloads if any(c["name"] == "ipfixsvc" for c in
                                        w["spec"]["template"]["spec"]["containers"])]
    if len(ours) < 2:
        fail(f"expected the collector StatefulSet and the api Deployment, found {[w['metadata']['name'] for w in ours]}")
    pod_ports = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.toml")
        with open(cfg, "w") as f:
            f.write(config_text)
        for w in ours:
            name = w["metadata"]["name"]
            spec = w["spec"]["template"]["spec"]
            c = next(c for c in spec["containers"] if c["name"] == "ipfixsvc")
            samples = {"metadata.name": f"{name}-0", "status.podIP": "10.0.0.7"}
            env = {k: v for k, v in os.environ.items() if not k.startswith("IPFIXSVC")}
            for e in c.get("env", []):
                if "value" in e:
                    v = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
                elif "secretKeyRef" in e.get("valueFrom", {}):
                    ref = e["valueFrom"]["secretKeyRef"]
                    if ref["name"] != "ipfixsvc" or ref["key"] not in secret_values:
                        fail(f"{name}: {e['name']} refers to secret {ref['name']}/{ref['key']}, which is not there")
                        continue
                    v = secret_values[ref["key"]]
                elif "fieldRef" in e.get("valueFrom", {}):
                    v = samples[e["valueFrom"]["fieldRef"]["fieldPath"]]
                else:
                    fail(f"{name}: {e['name']}: a kind of value this check does not know")
                    continue
                env[e["name"]] = v
            args = c.get("args", [])
            if args[:1] != ["serve"] or "--config" not in args:
                fail(f"{name}: args {args} do not run `serve --config`")
            out = subprocess.run([a.bin, "serve", "--check", "--config", cfg], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                fail(f"{name}: serve --check refused its configuration: {out.stderr.strip()}")
                continue
            effective = tomllib.loads(out.stdout) if tomllib else None
            roles = effective["node"]["roles"] if effective else []
            want = {"http": port_of(effective["api"]["listen"]), "cluster": port_of(effective["cluster"]["listen"])}
            if "collector" in roles:
                want["ipfix-tcp"] = port_of(effective["collector"]["tcp_listen"])
                want["ipfix-udp"] = port_of(effective["collector"]["udp_listen"])
            have = {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in c.get("ports", [])}
            pod_ports[name] = (w["spec"]["selector"]["matchLabels"], have)
            for pname, port in want.items():
                if pname not in have:
                    fail(f"{name}: no container port named {pname} (the configuration listens on {port})")
                elif have[pname][0] != port:
                    fail(f"{name}: port {pname} is {have[pname][0]}, the configuration listens on {port}")
            if "ipfix-udp" in have and have["ipfix-udp"][1] != "UDP":
                fail(f"{name}: ipfix-udp is not UDP")
            if "api" not in roles:
                fail(f"{name}: roles {roles} lack api, whose server answers the probes")
            for probe in ("readinessProbe", "livenessProbe"):
                p = c.get(probe, {}).get("httpGet")
                if not p:
                    fail(f"{name}: no {probe}")
                    continue
                if p["path"] not in api_paths:
                    fail(f"{name}: {probe} path {p['path']} is not an API path")
                if p["port"] != "http":
                    fail(f"{name}: {probe} port {p['port']} is not the http port")
            grace = effective["shutdown"]["grace_secs"]
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            term = spec.get("terminationGracePeriodSeconds", 30)
            if term <= grace + pause:
                fail(f"{name}: terminationGracePeriodSeconds {term} does not cover the drain "
                     f"(shutdown.grace_secs {grace} + preStop {pause})")
            sc = spec.get("securityContext", {})
            if not sc.get("runAsNonRoot"):
                fail(f"{name}: not runAsNonRoot")

    # Services point at ports the selected pods have.
    for s in by_kind.get("Service", []):
        sel = s["spec"].get("selector", {})
        for wname, (labels, have) in pod_ports.items():
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                for p in s["spec"]["ports"]:
                    t = p.get("targetPort", p["port"])
                    if isinstance(t, str) and t not in have:
                        fail(f"service {s['metadata']['name']}: targetPort {t} is not a port of {wname}")

    # The Dockerfile.
    with open(os.path.join(a.root, "Dockerfile")) as f:
        dockerfile = f.read()
    exposed = set(re.findall(r"\b(\d+)/(tcp|udp)\b", " ".join(
        l for l in dockerfile.splitlines() if l.startswith("EXPOSE"))))
    for p in [("4739", "tcp"), ("4739", "udp"), ("8080", "tcp"), ("4800", "tcp")]:
        if p not in exposed:
            fail(f"Dockerfile does not EXPOSE {p[0]}/{p[1]}")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    if not users or not users[-1].split(":")[0].isdigit() or users[-1].split(":")[0] == "0":
        fail(f"Dockerfile's last USER is {users[-1:]} (want a numeric non-root uid)")
    with open(os.path.join(a.root, "Cargo.toml")) as f:
        rust_version = re.search(r'^rust-version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)
    if f"FROM rust:{rust_version}-" not in dockerfile:
        fail(f"Dockerfile does not build with rust:{rust_version} (Cargo.toml's rust-version)")

    print(f"{len(objs)} objects, {len(ours)} workloads of ours checked; {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
