"""The ramify-crds chart: it ships exactly the CRDs crdgen writes, as templates (so
`helm upgrade` updates them), and they are valid CustomResourceDefinitions."""

from __future__ import annotations

import kube
from conftest import CRDS_CHART, NAMESPACE


def test_lint_strict_is_clean():
    assert kube.lint(CRDS_CHART, {}, namespace=NAMESPACE) == []


def test_renders_exactly_the_generated_crds(crds):
    out = kube.render(CRDS_CHART, {}, namespace=NAMESPACE, name="ramify-crds")
    assert {o["metadata"]["name"]: o for o in out.objects} == crds
    assert "helm install" in out.notes and "charts/ramify" in out.notes


def test_crds_are_valid_kubernetes_objects(crds):
    for crd in crds.values():
        kube.validate(crd)


def test_crds_are_the_contracts(crds):
    branch = crds["databasebranches.ramify.dev"]["spec"]
    assert branch["group"] == "ramify.dev"
    assert branch["scope"] == "Namespaced"
    assert branch["names"]["kind"] == "DatabaseBranch"
    assert set(branch["names"]["shortNames"]) == {"dbbranch", "dbb"}
    timeline = crds["timelines.ramify.dev"]["spec"]
    assert timeline["names"]["kind"] == "Timeline"
    assert timeline["names"].get("shortNames") == ["rtl"]
    for spec in (branch, timeline):
        [version] = [v for v in spec["versions"] if v["storage"]]
        assert version["name"] == "v1alpha1" and version["served"]
        # The operator writes status through the status subresource (and its RBAC rule).
        assert version["subresources"]["status"] == {}
