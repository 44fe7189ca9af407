"""The ramify-crds chart describes itself by the CRDs it installs: its description (what
`helm search` and Artifact Hub show) names every kind crdgen writes, and no other."""

from __future__ import annotations

import re

import yaml

from conftest import CRDS_CHART


def test_description_names_exactly_the_crds(crds):
    description = yaml.safe_load((CRDS_CHART / "Chart.yaml").read_text())["description"]
    [listed] = re.findall(r"\(([^)]*)\)", description)[:1]
    kinds = {crd["spec"]["names"]["kind"] for crd in crds.values()}
    assert {k.strip() for k in listed.split(",")} == kinds, description
