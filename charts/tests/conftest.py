"""Shared fixtures of the chart tests: paths, the charts rendered by the Helm SDK, and the
generated CRDs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import kube  # noqa: E402  (the tests' own module, found through the path above)

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "charts"
RAMIFY_CHART = CHARTS / "ramify"
CRDS_CHART = CHARTS / "ramify-crds"
EXAMPLES = REPO / "examples"
NAMESPACE = "ramify-system"

# The value sets the chart is tested with: what a user gets, and what the test cluster uses.
VALUE_SETS = {
    "default": {},
    "test-cluster": yaml.safe_load((RAMIFY_CHART / "ci" / "test-cluster-values.yaml").read_text()),
}


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def rendered(request) -> kube.Rendered:
    """The ramify chart rendered with each value set, as `helm install` renders it on a
    current cluster (one that serves ValidatingAdmissionPolicy)."""
    return kube.render(
        RAMIFY_CHART, VALUE_SETS[request.param], namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER
    )


@pytest.fixture(scope="session")
def rendered_default() -> kube.Rendered:
    return kube.render(RAMIFY_CHART, {}, namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER)


@pytest.fixture(scope="session")
def crds() -> dict[str, dict]:
    """The generated CRDs by name, once crdgen has written them. Skips (naming the command
    to run) while it never has, and fails when its two copies disagree."""
    return kube.load_crds(REPO)
