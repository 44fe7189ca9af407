"""The production Dockerfiles against the contract: small non-root final images, the
ports the chart probes, and the binary where the chart runs it. (Building them needs a
Docker engine: `make images`.)"""

from __future__ import annotations

import json
import shlex

import pytest

import kube
from conftest import NAMESPACE, RAMIFY_CHART, REPO

IMAGES = {
    # Dockerfile: (cargo package, final base images allowed, uid, port)
    "operator/Dockerfile": ("ramify-operator", {"scratch", "gcr.io/distroless/cc-debian12:nonroot"}, "65532", "8080"),
    "proxy/Dockerfile": ("ramify-proxy", {"scratch", "gcr.io/distroless/cc-debian12:nonroot"}, "65532", "9090"),
    "storage-node/Dockerfile": ("ramify-storage", {"postgres:15"}, "999", "7070"),
}


def final_stage(path: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of the last stage, continuation lines joined."""
    text = (REPO / path).read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    instructions = [tuple(line.split(None, 1)) for line in lines]
    starts = [i for i, (op, _) in enumerate(instructions) if op.upper() == "FROM"]
    assert len(starts) >= 2, f"{path}: not a multi-stage build"
    return [(op.upper(), args) for op, args in instructions[starts[-1]:]]


@pytest.mark.parametrize("path", sorted(IMAGES))
def test_final_image(path):
    package, bases, uid, port = IMAGES[path]
    stage = dict(final_stage(path))
    assert stage["FROM"].split()[0] in bases
    user = stage["USER"].split(":")
    assert user[0] == uid and user[0] != "0", "numeric non-root user, so runAsNonRoot can check it"
    assert port in stage["EXPOSE"].split()
    entrypoint = json.loads(stage["ENTRYPOINT"])
    assert entrypoint[0].endswith("/" + package)
    copies = [args for op, args in final_stage(path) if op == "COPY"]
    assert any(shlex.split(c)[-1] == entrypoint[0] for c in copies), "the entrypoint is the built binary"
    text = (REPO / path).read_text()
    assert f"-p {package}" in text and "--locked" in text


def test_storage_binary_is_where_the_chart_runs_it():
    rendered = kube.render(RAMIFY_CHART, {}, namespace=NAMESPACE)
    [c] = rendered.get("StatefulSet", "ramify-storage")["spec"]["template"]["spec"]["containers"]
    entrypoint = json.loads(dict(final_stage("storage-node/Dockerfile"))["ENTRYPOINT"])
    assert c["command"] == entrypoint
