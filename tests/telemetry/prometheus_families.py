#!/usr/bin/env python3
"""Parses the Prometheus text format on standard input with prometheus-client's own parser (an
independent one) and prints its families as JSON: name, type, help, and each sample's name,
labels and value. A text the parser refuses makes it fail."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": f.name, "type": f.type, "help": f.documentation,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples],
    })
print(json.dumps(families))
