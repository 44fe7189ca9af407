"""The ramify chart refuses a compute image whose tag names another Postgres major than
compute.postgresVersion (the storage node runs that version's binaries on every branch's
data), saying both; a tag naming no major (latest, a digest, a date) is accepted."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

import kube
from conftest import NAMESPACE, RAMIFY_CHART


def render(image: str, version: int = 15) -> kube.Rendered:
    values = {"compute": {"image": image, "postgresVersion": version}}
    return kube.render(RAMIFY_CHART, values, namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER)


def compute_image_flag(out: kube.Rendered) -> str:
    [operator] = [o for o in out.objects if o["kind"] == "Deployment" and "operator" in o["metadata"]["name"]]
    [arg] = [a for c in operator["spec"]["template"]["spec"]["containers"] for a in c.get("args", [])
             if a.startswith("--compute-image=")]
    return arg.split("=", 1)[1]


@pytest.mark.parametrize(
    "image,major",
    [
        ("postgres:16", 16),
        ("postgres:16.4-bookworm", 16),
        ("docker.io/library/postgres:14-alpine", 14),
        ("registry.example.com:5000/team/postgres:17beta2", 17),
        ("postgres:16@sha256:" + "a" * 64, 16),
    ],
)
def test_another_major_is_refused_naming_both(image, major):
    with pytest.raises(helm.HelmRenderError) as err:
        render(image, 15)
    message = str(err.value)
    assert f"compute.image {image} is Postgres {major}" in message
    assert "compute.postgresVersion is 15" in message
    assert re.search(r"Use a Postgres 15 image \(e\.g\. postgres:15\)", message)


@pytest.mark.parametrize(
    "image,version",
    [
        ("postgres:15", 15),
        ("postgres:15.8-bookworm", 15),
        ("postgres:16.4-bookworm", 16),
        ("registry.example.com:5000/postgres:15", 15),  # the port is not a tag
        ("registry.example.com:5000/postgres", 15),
        ("postgres", 15),
        ("postgres:latest", 15),
        ("postgres:bookworm", 15),
        ("postgres@sha256:" + "b" * 64, 15),
        ("mirror.example.com/pg:20240601", 15),  # a date, not a major
    ],
)
def test_a_matching_or_unnamed_major_is_accepted(image, version):
    assert compute_image_flag(render(image, version)) == image
