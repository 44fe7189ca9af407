"""Renders a chart with the Helm Go SDK (helm-python-sdk) to a manifest stream on
stdout, the way `helm template` would: e2e/k8s installs the charts with
`kubectl apply --server-side`, so no helm binary is needed.

usage: render.py CHART NAMESPACE [--values FILE]... [--set key.path=value]...
                 [--kube-version vX.Y.Z --api-versions group/version/Kind]...

--kube-version and --api-versions are what `helm install` learns from the cluster's
discovery (the chart renders its ValidatingAdmissionPolicy only where the API exists).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helm_python as helm
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "charts" / "tests"))
from kube import Cluster, render_into  # noqa: E402  (the chart tests' Capabilities rendering)


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
    p.add_argument("--kube-version")
    p.add_argument("--api-versions", action="append", default=[])
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
        if a.kube_version:
            cluster = Cluster(a.kube_version, tuple(a.api_versions))
            manifests = render_into(
                chart, values, name=a.name, namespace=a.namespace, cluster=cluster
            )
        else:
            manifests = chart.render(values, name=a.name, namespace=a.namespace, is_install=True)
    for source, text in sorted(manifests.items()):
        if source.endswith("NOTES.txt") or not text.strip():
            continue
        sys.stdout.write(f"---\n# Source: {source}\n{text.strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
