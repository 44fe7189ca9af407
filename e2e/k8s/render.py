"""Renders a chart with the Helm Go SDK (helm-python-sdk) to a manifest stream on
stdout, the way `helm template` would: e2e/k8s installs the charts with
`kubectl apply --server-side`, so no helm binary is needed.

usage: render.py CHART NAMESPACE [--values FILE]... [--set key.path=value]...
"""
from __future__ import annotations

import argparse
import sys

import helm_python as helm
import yaml


def set_path(values: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    node = values
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = yaml.safe_load(value)


def merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("chart")
    p.add_argument("namespace")
    p.add_argument("--values", action="append", default=[])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--name", default="ramify")
    a = p.parse_args()
    values: dict = {}
    for f in a.values:
        with open(f) as fh:
            merge(values, yaml.safe_load(fh) or {})
    for s in a.set:
        key, _, value = s.partition("=")
        set_path(values, key, value)
    with helm.Chart.load(a.chart) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=a.name, namespace=a.namespace, is_install=True)
    for source, text in sorted(manifests.items()):
        if source.endswith("NOTES.txt") or not text.strip():
            continue
        sys.stdout.write(f"---\n# Source: {source}\n{text.strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
