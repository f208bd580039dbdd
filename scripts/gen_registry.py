#!/usr/bin/env python3
"""Generate src/wire/registry/generated.rs from the IANA IPFIX information-element registry XML.

Usage (from anywhere):
    python3 scripts/gen_registry.py [--iana-dir DIR] [--out FILE] [--check]

Inputs: the IANA registry (PEN 0) plus the vendor files listed in VENDOR_FILES, all in the
IANA registry XML format (namespace http://www.iana.org/assignments). Stdlib only.
Any surprise in the input (unknown dataType/semantics, duplicate id or name, id out of range)
aborts with a message instead of producing a silently wrong table.
"""

import argparse
import os
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.iana.org/assignments}"
IE_REGISTRY_ID = "ipfix-information-elements"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IANA_DIR = os.path.join(REPO_ROOT, "..", "shared", "iana")
DEFAULT_OUT = os.path.join(REPO_ROOT, "src", "wire", "registry", "generated.rs")

IANA_FILE = "iana_ipfix_information_elements.xml"

# file -> (Private Enterprise Number, short label). The vendor XML files carry no PEN themselves
# (only a <title> naming the vendor), so the mapping is hard-coded from the IANA "Private
# Enterprise Numbers" registry:
#   2011 = Huawei Technology Co., Ltd
#    637 = Alcatel-Lucent (now Nokia; the elements are named alu*)
#   6876 = VMware Inc.
VENDOR_FILES = [
    ("huawei.xml", 2011, "huawei", "Huawei"),
    ("nokia.xml", 637, "nokia", "Nokia"),
    ("vmware.xml", 6876, "vmware", "VMWare"),
]

# Placeholder rows that are not Information Elements.
SKIP_NAMES = {"Reserved", "Unassigned", "Assigned for NetFlow v9 compatibility"}

# IANA dataType -> model.rs DataType variant. Must match DataType in src/wire/model.rs.
DATA_TYPES = {
    "octetArray": "OctetArray",
    "unsigned8": "Unsigned8",
    "unsigned16": "Unsigned16",
    "unsigned32": "Unsigned32",
    "unsigned64": "Unsigned64",
    "unsigned256": "Unsigned256",
    "signed8": "Signed8",
    "signed16": "Signed16",
    "signed32": "Signed32",
    "signed64": "Signed64",
    "float32": "Float32",
    "float64": "Float64",
    "boolean": "Boolean",
    "macAddress": "MacAddress",
    "string": "String",
    "dateTimeSeconds": "DateTimeSeconds",
    "dateTimeMilliseconds": "DateTimeMilliseconds",
    "dateTimeMicroseconds": "DateTimeMicroseconds",
    "dateTimeNanoseconds": "DateTimeNanoseconds",
    "ipv4Address": "Ipv4Address",
    "ipv6Address": "Ipv6Address",
    "basicList": "BasicList",
    "subTemplateList": "SubTemplateList",
    "subTemplateMultiList": "SubTemplateMultiList",
}

# IANA dataTypeSemantics -> model.rs Semantics variant.
SEMANTICS = {
    "default": "Default",
    "quantity": "Quantity",
    "totalCounter": "TotalCounter",
    "deltaCounter": "DeltaCounter",
    "identifier": "Identifier",
    "flags": "Flags",
    "list": "List",
    "snmpCounter": "SnmpCounter",
    "snmpGauge": "SnmpGauge",
}


def die(msg):
    sys.exit("gen_registry: error: " + msg)


def rust_str(s):
    """Escape s for use inside a Rust "..." literal."""
    out = []
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append("\\u{%x}" % ord(c))
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def text(rec, tag):
    """Stripped text of child <tag>, or None if absent or empty."""
    el = rec.find(NS + tag)
    if el is None or el.text is None:
        return None
    t = el.text.strip()
    return t or None


def find_ie_registry(root, path):
    regs = [r for r in root.iter(NS + "registry") if r.get("id") == IE_REGISTRY_ID]
    if len(regs) != 1:
        die("%s: expected exactly one <registry id=%r>, found %d" % (path, IE_REGISTRY_ID, len(regs)))
    return regs[0]


def parse_file(path, pen, label, skipped):
    """Return (list of element dicts, root element) for one registry file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        die("%s: %s" % (path, e))
    reg = find_ie_registry(root, path)
    elements = []
    # Only direct children: the IANA file nests value sub-registries (flowEndReason, ...) elsewhere.
    for rec in reg.findall(NS + "record"):
        name = text(rec, "name")
        eid_s = text(rec, "elementId")
        dtype = text(rec, "dataType")
        where = "%s: elementId %r (%r)" % (os.path.basename(path), eid_s, name)
        if name in SKIP_NAMES:
            skipped.append((label, eid_s, name, "placeholder"))
            continue
        if eid_s is None or not eid_s.isdigit():
            if dtype is not None:
                die(where + ": has a dataType but elementId is not a single integer")
            skipped.append((label, eid_s, name, "id range / not an integer"))
            continue
        if dtype is None:
            skipped.append((label, eid_s, name, "no dataType (status %s)" % text(rec, "status")))
            continue
        if name is None:
            die(where + ": has a dataType but no name")
        if not name.isidentifier():
            die(where + ": odd name (not an identifier)")
        eid = int(eid_s)
        if not 0 < eid < 0x8000:
            die(where + ": elementId out of range 1..32767 (bit 15 is the enterprise bit)")
        if dtype not in DATA_TYPES:
            die(where + ": dataType %r is not in model.rs DataType" % dtype)
        sem = text(rec, "dataTypeSemantics") or "default"
        if sem not in SEMANTICS:
            die(where + ": dataTypeSemantics %r is not in model.rs Semantics" % sem)
        units = text(rec, "units")
        if units is not None and units.lower() == "none":
            units = None
        elements.append(
            {
                "pen": pen,
                "id": eid,
                "name": name,
                "data_type": DATA_TYPES[dtype],
                "semantics": SEMANTICS[sem],
                "units": units,
                "status": text(rec, "status"),
            }
        )
    return elements, root


def check_unique(elements, label):
    by_id, by_name = {}, {}
    for e in elements:
        if e["id"] in by_id:
            die("%s: duplicate elementId %d (%s, %s)" % (label, e["id"], by_id[e["id"]]["name"], e["name"]))
        if e["name"] in by_name:
            die("%s: duplicate name %s (ids %d, %d)" % (label, e["name"], by_name[e["name"]]["id"], e["id"]))
        by_id[e["id"]] = e
        by_name[e["name"]] = e


def render(elements, source_label, updated):
    lines = [
        "// @generated by scripts/gen_registry.py from %s (IANA registry updated %s). Do not edit."
        % (source_label, updated),
        "// Regenerate: python3 scripts/gen_registry.py",
        "use super::super::model::{DataType, InfoElement, Semantics};",
        "use std::borrow::Cow;",
        "",
        "#[rustfmt::skip]",
        "pub(crate) static ELEMENTS: &[InfoElement] = &[",
    ]
    for e in elements:
        units = "None" if e["units"] is None else "Some(Cow::Borrowed(%s))" % rust_str(e["units"])
        lines.append(
            "    InfoElement { pen: %d, id: %d, name: Cow::Borrowed(%s), data_type: DataType::%s, "
            "semantics: Semantics::%s, units: %s },"
            % (e["pen"], e["id"], rust_str(e["name"]), e["data_type"], e["semantics"], units)
        )
    lines.append("];")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iana-dir", default=DEFAULT_IANA_DIR,
                    help="directory with the registry XML files (default: ../shared/iana relative to the repo root)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output .rs file (default: src/wire/registry/generated.rs)")
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if the output file is not up to date")
    args = ap.parse_args()

    iana_dir = os.path.abspath(args.iana_dir)
    skipped = []
    all_elements = []
    counts = []

    iana_path = os.path.join(iana_dir, IANA_FILE)
    iana, root = parse_file(iana_path, 0, "IANA", skipped)
    updated = root.findtext(NS + "updated")
    if not updated or not updated.strip():
        die("%s: no top-level <updated> date" % iana_path)
    updated = updated.strip()
    check_unique(iana, "IANA")
    all_elements += iana
    counts.append("%d IANA" % len(iana))

    for fname, pen, label, vendor in VENDOR_FILES:
        path = os.path.join(iana_dir, fname)
        elems, root = parse_file(path, pen, label, skipped)
        title = (find_ie_registry(root, path).findtext(NS + "title") or "").strip()
        if vendor.lower() not in title.lower():
            die("%s: title %r does not name %s; is the file->PEN mapping still right?" % (path, title, vendor))
        check_unique(elems, label)
        all_elements += elems
        counts.append("%d %s(%d)" % (len(elems), label, pen))

    all_elements.sort(key=lambda e: (e["pen"], e["id"]))

    # Header names the source relative to the repo root so the output does not depend on cwd.
    source_label = os.path.relpath(iana_dir, REPO_ROOT)
    content = render(all_elements, source_label, updated)

    out = os.path.abspath(args.out)
    out_label = os.path.relpath(out, REPO_ROOT)
    if args.check:
        try:
            with open(out, encoding="utf-8") as f:
                current = f.read()
        except OSError:
            current = None
        if current != content:
            sys.exit("gen_registry: %s is out of date; run python3 scripts/gen_registry.py" % out_label)
        print("%s is up to date: %s" % (out_label, ", ".join(counts)))
        return

    for label, eid, name, why in skipped:
        print("skipped %s %s %r: %s" % (label, eid, name, why), file=sys.stderr)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(content)
    deprecated = sum(1 for e in all_elements if e["status"] == "deprecated")
    print("wrote %s: %s (%d total, %d deprecated kept)" % (out_label, ", ".join(counts), len(all_elements), deprecated))


if __name__ == "__main__":
    main()
