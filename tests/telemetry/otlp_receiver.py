#!/usr/bin/env python3
"""An OTLP/HTTP receiver for tests: `otlp_receiver.py OUT` listens on a free loopback port (printed
on the first line of standard output), decodes each ExportTraceServiceRequest (/v1/traces) and
ExportMetricsServiceRequest (/v1/metrics) with opentelemetry-proto, and appends one JSON line per
span and per metric to OUT."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

OUT = open(sys.argv[1], "a", buffering=1)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def point(p):
    """A data point's attributes, with its value under "@value" (a histogram's: its count)."""
    out = attributes(p.attributes)
    if hasattr(p, "bucket_counts"):
        out["@value"] = p.count
    else:
        kind = p.WhichOneof("value")
        out["@value"] = getattr(p, kind) if kind else None
    return out


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1/traces":
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        OUT.write(json.dumps({
                            "kind": "span", "name": s.name, "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                            "span_kind": s.kind, "status": s.status.code,
                            "attributes": attributes(s.attributes), "resource": resource,
                        }) + "\n")
            reply = trace_service_pb2.ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            req = metrics_service_pb2.ExportMetricsServiceRequest()
            req.ParseFromString(body)
            for rm in req.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        data = m.WhichOneof("data")
                        points = getattr(m, data).data_points if data else []
                        OUT.write(json.dumps({
                            "kind": "metric", "name": m.name, "unit": m.unit, "type": data,
                            "points": [point(p) for p in points],
                            "resource": resource,
                        }) + "\n")
            reply = metrics_service_pb2.ExportMetricsServiceResponse()
        else:
            self.send_response(404)
            self.end_headers()
            return
        payload = reply.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
