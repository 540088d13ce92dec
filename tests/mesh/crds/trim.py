#!/usr/bin/env python3
"""Trim an upstream CustomResourceDefinition to what tests/mesh/validate.py
reads, so the repository carries kilobytes instead of megabytes.

    python3 tests/mesh/crds/trim.py UPSTREAM.yaml "SOURCE LINE" > OUT.yaml

Kept: apiVersion, kind, metadata.name, spec.group, spec.names.kind,
spec.scope and, per version, name/served/storage/deprecated and the whole
openAPIV3Schema except its `description` texts. Nothing that validation
looks at (types, properties, enums, patterns, bounds, defaults, required,
x-kubernetes-* markers and CEL rules) is changed. SOURCES.md lists the
upstream files these were made from.
"""

import sys

import yaml

SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "dependencies")
SCHEMA_ONE = ("items", "additionalProperties", "not", "additionalItems")
SCHEMA_LIST = ("allOf", "anyOf", "oneOf")


def strip(node):
    """A schema node without `description` (a property *named* description
    is kept: property names are keys of `properties`, not keywords)."""
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "description":
            continue
        if k in SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: strip(s) for name, s in v.items()}
        elif k in SCHEMA_ONE and isinstance(v, dict):
            out[k] = strip(v)
        elif k in SCHEMA_LIST and isinstance(v, list):
            out[k] = [strip(s) for s in v]
        else:
            out[k] = v
    return out


def trim(crd):
    spec = crd["spec"]
    versions = []
    for v in spec["versions"]:
        kept = {k: v[k] for k in ("name", "served", "storage", "deprecated") if k in v}
        kept["schema"] = {"openAPIV3Schema": strip(v["schema"]["openAPIV3Schema"])}
        versions.append(kept)
    return {
        "apiVersion": crd["apiVersion"],
        "kind": crd["kind"],
        "metadata": {"name": crd["metadata"]["name"]},
        "spec": {
            "group": spec["group"],
            "names": {"kind": spec["names"]["kind"]},
            "scope": spec["scope"],
            "versions": versions,
        },
    }


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        crds = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        print(f"trim.py: expected one CRD in {argv[1]}, found {len(crds)}", file=sys.stderr)
        return 1
    sys.stdout.write(f"# {argv[2]}\n# Trimmed by tests/mesh/crds/trim.py (descriptions removed); see SOURCES.md.\n")
    yaml.safe_dump(trim(crds[0]), sys.stdout, sort_keys=False, width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
