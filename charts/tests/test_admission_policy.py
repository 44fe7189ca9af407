"""The ramify chart's ValidatingAdmissionPolicy: the API server refuses to delete a
DatabaseBranch with spec.protected true. Its CEL is evaluated here with cel-python, the
way the API server evaluates it on a DELETE (`oldObject` the branch, `object` null)."""

from __future__ import annotations

import json
import re
from typing import Any

import celpy
import pytest

import kube
from conftest import NAMESPACE, RAMIFY_CHART

POLICY = f"ramify-protected-branches-{NAMESPACE}"
ADMISSION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")

# Allowed unless spec.protected is true; absent or null (the field is nullable) is not.
EXPRESSION = "!(has(oldObject.spec.protected) && oldObject.spec.protected == true)"
# What the API server answers for branch alice in namespace dev.
ALICE_MESSAGE = (
    "DatabaseBranch dev/alice is protected (spec.protected: true); set spec.protected to "
    "false first: kubectl patch databasebranch alice -n dev --type merge "
    """-p '{"spec":{"protected":false}}'"""
)


def admission_objects(rendered: kube.Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.objects if o["kind"] in ADMISSION_KINDS]


def the_validation(rendered: kube.Rendered) -> dict[str, Any]:
    [validation] = rendered.get("ValidatingAdmissionPolicy", POLICY)["spec"]["validations"]
    return validation


def branch(spec: dict[str, Any], name: str = "alice", namespace: str = "dev") -> dict[str, Any]:
    return {
        "apiVersion": "ramify.dev/v1alpha1",
        "kind": "DatabaseBranch",
        "metadata": {"name": name, "namespace": namespace, "uid": "0b5d4c1e-1111-4e5e-9d3a-000000000001"},
        "spec": spec,
    }


def evaluate(expression: str, old_object: dict[str, Any]) -> Any:
    """`expression` evaluated as the API server does on a DELETE of `old_object`."""
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    return program.evaluate({
        "oldObject": celpy.json_to_cel(old_object),
        "object": celpy.json_to_cel(None),
    })


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, what `kubectl patch --type merge` sends."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- what renders, where ------------------------------------------------------------------


def test_policy_and_binding_render_on_a_current_cluster(rendered):
    found = sorted((o["kind"], o["metadata"]["name"]) for o in admission_objects(rendered))
    assert found == [(kind, POLICY) for kind in ADMISSION_KINDS]
    for obj in admission_objects(rendered):
        assert obj["apiVersion"] == "admissionregistration.k8s.io/v1"
        # Cluster-scoped, named after the release namespace like the ClusterRole.
        assert "namespace" not in obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == "admission"
        kube.validate(obj)


def test_the_binding_denies_with_the_policy_in_every_namespace(rendered_default):
    spec = rendered_default.get("ValidatingAdmissionPolicyBinding", POLICY)["spec"]
    assert spec == {"policyName": POLICY, "validationActions": ["Deny"]}
    # No matchResources (every namespace and object the policy matches), no paramRef.


def test_the_policy_matches_delete_of_database_branches(rendered_default, crds):
    spec = rendered_default.get("ValidatingAdmissionPolicy", POLICY)["spec"]
    assert spec["failurePolicy"] == "Fail"
    constraints = spec["matchConstraints"]
    assert constraints == {
        "matchPolicy": "Equivalent",
        "resourceRules": [{
            "apiGroups": ["ramify.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["DELETE"],
            "resources": ["databasebranches"],
        }],
    }
    assert "paramKind" not in spec and "matchConditions" not in spec
    # The rule names the CRD's real group, plural and a version it serves.
    crd = crds["databasebranches.ramify.dev"]
    [rule] = constraints["resourceRules"]
    assert rule["apiGroups"] == [crd["spec"]["group"]]
    assert rule["resources"] == [crd["spec"]["names"]["plural"]]
    served = {v["name"] for v in crd["spec"]["versions"] if v.get("served")}
    assert set(rule["apiVersions"]) <= served


def test_the_expression_is_the_intended_one(rendered_default):
    validation = the_validation(rendered_default)
    assert validation["expression"] == EXPRESSION
    assert validation["reason"] == "Forbidden"
    assert "spec.protected" in validation["message"]


def test_absent_when_the_value_is_off(rendered_default):
    out = kube.render(
        RAMIFY_CHART, {"admission": {"protectBranches": False}},
        namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER,
    )
    assert admission_objects(out) == []
    # Nothing else changes.
    assert out.objects == [o for o in rendered_default.objects if o["kind"] not in ADMISSION_KINDS]


@pytest.mark.parametrize("cluster", [kube.OLDEST_CLUSTER, None], ids=["kubernetes-1.29", "helm-template"])
def test_absent_where_the_api_is_missing(cluster):
    """A 1.29 cluster serves no admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy;
    `helm template` with no --api-versions (the SDK's defaults) does not know of one. The
    operator's finalizer is then what keeps a protected branch."""
    out = kube.render(RAMIFY_CHART, {}, namespace=NAMESPACE, cluster=cluster)
    assert admission_objects(out) == []
    assert out.values["admission"]["protectBranches"] is True
    assert out.of_kind("ClusterRole"), "the rest of the chart still renders"


def test_an_upgrade_reusing_older_values_keeps_the_default():
    """`helm upgrade --reuse-values` renders with the previous release's values, which have
    no admission key; a null value removes it the same way."""
    out = kube.render(RAMIFY_CHART, {"admission": None}, namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER)
    assert "admission" not in out.values
    assert [o["kind"] for o in admission_objects(out)] == list(ADMISSION_KINDS)


# --- what the API server does with it ---------------------------------------------------------


@pytest.mark.parametrize("spec, allowed", [
    ({"protected": True}, False),
    ({"protected": False}, True),
    ({"protected": None}, True),  # nullable in the CRD; not an error, which would refuse
    ({}, True),                   # a branch from before the field
    ({"parent": {"name": "main", "namespace": "prod"}, "protected": True}, False),
], ids=["protected", "unprotected", "null", "absent", "protected-fork"])
def test_the_expression_refuses_only_protected_branches(rendered_default, spec, allowed):
    assert evaluate(the_validation(rendered_default)["expression"], branch(spec)) == allowed


def test_the_message_names_the_branch_and_how_to_unprotect_it(rendered_default, crds):
    validation = the_validation(rendered_default)
    protected = branch({"protected": True})
    message = evaluate(validation["messageExpression"], protected)
    assert message == ALICE_MESSAGE
    # A messageExpression must give one line.
    assert "\n" not in message and len(message) < 5000

    # The command it gives is right: the CRD's singular name, and its patch unprotects.
    command = re.search(r"kubectl patch (\S+) (\S+) -n (\S+) --type merge -p '(.*)'$", message)
    assert command, message
    resource, name, namespace, patch = command.groups()
    assert resource == crds["databasebranches.ramify.dev"]["spec"]["names"]["singular"]
    assert (name, namespace) == ("alice", "dev")
    unprotected = merge_patch(protected, json.loads(patch))
    assert unprotected["spec"] == {"protected": False}
    assert evaluate(validation["expression"], unprotected) == True  # noqa: E712  (a CEL bool)


def test_branch_objects_are_what_the_crd_accepts(crds):
    """The objects the expression is evaluated against above are valid branches, and the
    CRD has the field the policy reads, as a boolean, under a required spec."""
    schema = crds["databasebranches.ramify.dev"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "spec" in schema["required"]
    protected = schema["properties"]["spec"]["properties"].get("protected")
    if protected is None:
        pytest.skip("the generated DatabaseBranch CRD has no spec.protected yet")
    assert protected["type"] == "boolean"
    for spec in ({"protected": True}, {"protected": False}, {}):
        kube.validate_custom(branch(spec), crds)
