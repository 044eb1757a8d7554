#!/usr/bin/env python3
"""Lint and render the Helm chart with Helm's own engine (Helm v4, through
PyPI's helm-python-sdk), for tests/tests/chart.rs. No helm binary needed.

    render.py values CHART
    render.py lint   CHART [-f values.yaml]... [--kube-version v1.20.0]
    render.py render CHART [-f values.yaml]... [--set-json '{"a": {"b": 1}}']
                     [--name tollgate] [--namespace tollgate-system]
                     [--kube-version v1.20.0] [--api-versions g/v,g/v/Kind]
                     [--notes] [--format yaml|json]

`values` prints the chart's default values as JSON. `lint` prints Helm's report as JSON and exits 1 when it has an error (or,
with --strict, a warning). `render` validates the values against
values.schema.json, renders, and prints the manifests as one multi-document
YAML stream in template-path order (NOTES.txt only with --notes), or with
--format json as one JSON array of the objects (parsed by Helm's own YAML
reader, so that callers need no YAML library); a schema
or template error is printed to stderr and exits 1. Exit 3: the engine is
missing.
"""

import argparse
import json
import re
import sys

PINNED = "0.2.2"

try:
    import helm_python
    from helm_python import _native
except ImportError:
    sys.stderr.write(
        "tests/chart/render.py needs Helm's engine from PyPI; install it with\n"
        f"    pip install helm-python-sdk=={PINNED}\n"
        "(.ci/run does this).\n"
    )
    sys.exit(3)


def merge(base, extra):
    """Later values files win, mapping by mapping, as `helm -f a -f b`."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def user_values(args):
    values = {}
    for path in args.values or []:
        with open(path, encoding="utf-8") as f:
            merge(values, helm_python.values_from_yaml(f.read()) or {})
    for text in args.set_json or []:
        merge(values, json.loads(text))
    return values


def lint(args):
    report = helm_python.lint(
        args.chart,
        user_values(args) or None,
        strict=args.strict,
        namespace=args.namespace,
        kube_version=args.kube_version,
    )
    print(json.dumps(report, indent=2))
    worst = max((m.get("severity", 0) for m in report.get("messages", [])), default=0)
    failed = report.get("errors") or worst >= 3 or (args.strict and worst >= 2)
    return 1 if failed else 0


def render(args):
    chart = helm_python.Chart.load(args.chart)
    values = user_values(args)
    try:
        chart.validate_schema(values)
    except helm_python.HelmError as e:
        sys.stderr.write(f"values don't match {args.chart}/values.schema.json:\n{e}\n")
        return 1
    opts = {"name": args.name, "namespace": args.namespace, "is_install": True}
    # Capabilities as a real install sees them; the wrapper does not expose
    # these two options of the engine's render call, so call it directly.
    if args.kube_version:
        opts["kube_version"] = args.kube_version
    if args.api_versions:
        opts["api_versions"] = [v for v in args.api_versions.split(",") if v]
    try:
        raw = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    except helm_python.HelmError as e:
        sys.stderr.write(f"rendering {args.chart} failed:\n{e}\n")
        return 1
    manifests = json.loads(raw)
    if args.format == "json":
        objects = []
        for path in sorted(manifests):
            if path.endswith("NOTES.txt"):
                continue
            for part in re.split(r"(?m)^---\s*$", manifests[path]):
                obj = helm_python.values_from_yaml(part) if part.strip() else None
                if obj:
                    objects.append(obj)
        json.dump(objects, sys.stdout, indent=1)
        return 0
    docs = []
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt"):
            if args.notes:
                sys.stderr.write(text)
            continue
        if text.strip():
            docs.append(f"# Source: {path}\n{text.strip()}\n")
    sys.stdout.write("---\n".join(docs))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["values", "lint", "render"])
    parser.add_argument("chart")
    parser.add_argument("-f", "--values", action="append")
    parser.add_argument("--set-json", action="append")
    parser.add_argument("--name", default="tollgate")
    parser.add_argument("--namespace", default="tollgate-system")
    parser.add_argument("--kube-version")
    parser.add_argument("--api-versions")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")
    parser.add_argument("--notes", action="store_true", help="print NOTES.txt to stderr")
    args = parser.parse_args()
    if helm_python.__version__ != PINNED:
        sys.stderr.write(
            f"render.py: helm-python-sdk {helm_python.__version__} (tested with {PINNED})\n"
        )
    try:
        if args.command == "values":
            json.dump(helm_python.Chart.load(args.chart).values, sys.stdout, indent=1)
            return 0
        return lint(args) if args.command == "lint" else render(args)
    except helm_python.HelmError as e:
        sys.stderr.write(f"{args.command} {args.chart}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
