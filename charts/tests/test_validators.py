"""The validators the other tests lean on object to what they should, so their passing
means something."""

from __future__ import annotations

import pytest

import kube


def test_kubernetes_schemas_refuse_an_unknown_field():
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPrt": 8080}]},
    }
    with pytest.raises(AssertionError, match="targetPrt"):
        kube.validate(service)


def test_kubernetes_schemas_refuse_a_wrong_type():
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "one", "selector": {}, "template": {}},
    }
    with pytest.raises(AssertionError, match="replicas"):
        kube.validate(deployment)


def branch(spec: dict) -> dict:
    return {"apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "b", "namespace": "n"}, "spec": spec}


def test_crd_schema_accepts_a_branch(crds):
    kube.validate_custom(branch({"parent": {"name": "main", "namespace": "prod"},
                                 "compute": {"suspendAfter": "5m"}}), crds)


@pytest.mark.parametrize("spec, complaint", [
    ({"parnet": {"name": "main"}}, "parnet"),
    ({"parent": {"namespace": "prod"}}, "'name' is a required property"),
    ({"compute": {"suspendAfter": "5 minutes"}}, "does not match"),
    ({"at": {"lsn": "16B3748"}}, "does not match"),
])
def test_crd_schema_refuses_mistakes(crds, spec, complaint):
    with pytest.raises(AssertionError, match=complaint):
        kube.validate_custom(branch(spec), crds)
