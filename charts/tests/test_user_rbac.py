"""The ramify chart's RBAC for people (templates/user-rbac.yaml): ClusterRoles aggregated
into Kubernetes' default admin/edit/view, and Role ramify-connect in the storage namespace
for `kubectl ramify`, bound to rbac.connect.subjects."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
import yaml

import kube
from conftest import NAMESPACE, RAMIFY_CHART, REPO

EDIT = f"ramify-{NAMESPACE}-edit"
VIEW = f"ramify-{NAMESPACE}-view"
CONNECT = "ramify-connect"
USER_KINDS = ["databasebranches", "branchcheckpoints", "branchrestores"]
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
DEVELOPERS = {"kind": "Group", "name": "developers", "apiGroup": "rbac.authorization.k8s.io"}

# The exact rules of each role, in order.
EDIT_RULES = [{
    "apiGroups": ["ramify.dev"],
    "resources": USER_KINDS,
    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
}]
VIEW_RULES = [{
    "apiGroups": ["ramify.dev"],
    "resources": USER_KINDS,
    "verbs": ["get", "list", "watch"],
}]


def connect_rules(storage_replicas: int = 1) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        # get: a WebSocket upgrade (kube-rs's only transport) before Kubernetes 1.35;
        # create: SPDY, and WebSocket too from 1.35.
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
        {
            "apiGroups": [""],
            "resources": ["pods/proxy"],
            "resourceNames": [f"ramify-storage-{i}:7071" for i in range(storage_replicas)],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": ["ramify-operator", "ramify-proxy"],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets"],
            "resourceNames": ["ramify-storage"],
            "verbs": ["get"],
        },
    ]


def render(values: dict[str, Any]) -> kube.Rendered:
    return kube.render(RAMIFY_CHART, values, namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER)


def user_access(rendered: kube.Rendered) -> list[dict[str, Any]]:
    return [
        o for o in rendered.objects
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "user-access"
    ]


def names(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["name"]) for o in objects)


def aggregation(obj: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in obj["metadata"]["labels"].items() if k.startswith(AGGREGATE)}


def with_subjects(*subjects: dict[str, Any]) -> dict[str, Any]:
    return {"rbac": {"connect": {"subjects": list(subjects)}}}


def documented_subjects() -> list[dict[str, Any]]:
    """The example subjects in values.yaml's comment, uncommented."""
    text = (RAMIFY_CHART / "values.yaml").read_text()
    block = re.search(r"^    #   subjects:\n((?:    #     .*\n)+)", text, re.M)
    assert block, "values.yaml no longer shows how to grant the connect role"
    return yaml.safe_load("\n".join(line[6:] for line in block.group(1).splitlines()))


# --- what renders ---------------------------------------------------------------------------


def test_defaults_render_both_aggregated_roles_and_an_unbound_connect_role(rendered):
    assert names(user_access(rendered)) == [
        ("ClusterRole", EDIT), ("ClusterRole", VIEW), ("Role", CONNECT)]
    assert rendered.values["rbac"] == {"aggregateToDefaultRoles": True, "connect": {"subjects": []}}


def test_edit_role_aggregates_into_edit_and_admin(rendered_default):
    role = rendered_default.get("ClusterRole", EDIT)
    assert aggregation(role) == {f"{AGGREGATE}edit": "true", f"{AGGREGATE}admin": "true"}
    assert role["rules"] == EDIT_RULES
    assert "aggregationRule" not in role
    assert "namespace" not in role["metadata"]


def test_view_role_aggregates_into_view(rendered_default):
    role = rendered_default.get("ClusterRole", VIEW)
    assert aggregation(role) == {f"{AGGREGATE}view": "true"}
    assert role["rules"] == VIEW_RULES
    assert "aggregationRule" not in role


def test_connect_role_has_exactly_what_kubectl_ramify_needs(rendered):
    role = rendered.get("Role", CONNECT)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert aggregation(role) == {}
    assert role["rules"] == connect_rules()


def test_pod_proxy_names_follow_the_storage_replicas():
    role = render({"storage": {"replicas": 3}}).get("Role", CONNECT)
    assert role["rules"] == connect_rules(storage_replicas=3)


@pytest.mark.parametrize("values", [
    {},
    {"rbac": {"aggregateToDefaultRoles": False}},
    with_subjects(DEVELOPERS),
], ids=["default", "no-aggregation", "subjects"])
def test_no_wildcards_no_status_no_escalation(values):
    out = render(values)
    for role in [o for o in user_access(out) if o["kind"] in ("Role", "ClusterRole")]:
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert not any("*" in x for x in rule.get(key, [])), (role["metadata"]["name"], rule)
            # Status is written by the operator only; finalizers are the operator's too.
            assert not any("/status" in r or "/finalizers" in r for r in rule["resources"]), rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            # Nothing about Secrets: the branch's connection Secret is the namespace's
            # own edit role's business.
            assert "secrets" not in rule["resources"], rule


# --- switches -------------------------------------------------------------------------------


def test_aggregation_off_leaves_only_the_connect_role(rendered_default):
    out = render({"rbac": {"aggregateToDefaultRoles": False}})
    assert names(user_access(out)) == [("Role", CONNECT)]
    # Nothing else changes.
    assert out.objects == [
        o for o in rendered_default.objects
        if not (o["kind"] == "ClusterRole" and o["metadata"]["name"] in (EDIT, VIEW))
    ]


def test_no_binding_without_subjects(rendered):
    assert not [o for o in rendered.of_kind("RoleBinding") if o["metadata"]["name"] == CONNECT]
    out = render(with_subjects())
    assert not [o for o in out.of_kind("RoleBinding") if o["metadata"]["name"] == CONNECT]


def test_binding_points_at_the_connect_role_with_the_subjects():
    service_account = {"kind": "ServiceAccount", "name": "ci", "namespace": "ci"}
    out = render(with_subjects(DEVELOPERS, service_account))
    binding = out.get("RoleBinding", CONNECT)
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["metadata"]["labels"]["app.kubernetes.io/component"] == "user-access"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONNECT}
    assert binding["subjects"] == [DEVELOPERS, service_account]
    # It binds the Role the chart renders, in the same namespace.
    role = out.get("Role", CONNECT)
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
    # The operator's bindings are untouched.
    assert out.get("RoleBinding", "ramify-operator")["subjects"] == [
        {"kind": "ServiceAccount", "name": "ramify-operator", "namespace": NAMESPACE}]


def test_the_documented_example_is_valid_and_renders():
    subjects = documented_subjects()
    assert DEVELOPERS in subjects
    out = render(with_subjects(*subjects))
    assert out.get("RoleBinding", CONNECT)["subjects"] == subjects
    kube.validate(out.get("RoleBinding", CONNECT))


def test_an_upgrade_reusing_older_values_keeps_the_defaults():
    """`helm upgrade --reuse-values` renders with the previous release's values, which
    have no rbac key; a null value removes it the same way."""
    out = render({"rbac": None})
    assert "rbac" not in out.values
    assert names(user_access(out)) == [("ClusterRole", EDIT), ("ClusterRole", VIEW), ("Role", CONNECT)]
    # Only part of the key, as from a hand-written values file.
    out = render({"rbac": {"connect": None}})
    assert names(user_access(out)) == [("ClusterRole", EDIT), ("ClusterRole", VIEW), ("Role", CONNECT)]


@pytest.mark.parametrize("values", [
    {},
    {"rbac": {"aggregateToDefaultRoles": False}},
    with_subjects(DEVELOPERS, {"kind": "User", "name": "alice@example.com"},
                  {"kind": "ServiceAccount", "name": "ci", "namespace": "ci", "apiGroup": ""}),
    {"rbac": None},
], ids=["default", "no-aggregation", "subjects", "reused-values"])
def test_every_object_is_valid(values):
    out = render(values)
    assert user_access(out)
    for obj in out.objects:
        kube.validate(obj)


# --- values schema --------------------------------------------------------------------------


@pytest.mark.parametrize("subject, complaint", [
    ({"kind": "Team", "name": "developers"}, "/rbac/connect/subjects/0/kind"),
    ({"kind": "Group"}, "missing property 'name'"),
    ({"kind": "Group", "name": ""}, "/rbac/connect/subjects/0/name"),
    ({"kind": "Group", "name": "developers", "apigroup": "rbac.authorization.k8s.io"}, "apigroup"),
    ({"kind": "Group", "name": "developers", "apiGroup": ""}, "rbac.authorization.k8s.io"),
    ({"kind": "ServiceAccount", "name": "ci"}, "missing property 'namespace'"),
    ({"kind": "ServiceAccount", "name": "ci", "namespace": "ci",
      "apiGroup": "rbac.authorization.k8s.io"}, "/rbac/connect/subjects/0/apiGroup"),
    ("developers", "/rbac/connect/subjects/0"),
])
def test_schema_refuses_bad_subjects(subject, complaint):
    with helm.Chart.load(str(RAMIFY_CHART)) as chart:
        with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
            chart.validate_schema(with_subjects(subject))


def test_schema_accepts_the_subjects_rbac_accepts():
    with helm.Chart.load(str(RAMIFY_CHART)) as chart:
        chart.validate_schema(with_subjects(
            DEVELOPERS,
            {"kind": "Group", "name": "developers"},  # apiGroup defaulted by the API server
            {"kind": "User", "name": "alice@example.com", "apiGroup": "rbac.authorization.k8s.io"},
            {"kind": "ServiceAccount", "name": "ci", "namespace": "ci"},
        ))
        chart.validate_schema({"rbac": {"aggregateToDefaultRoles": False, "connect": {"subjects": []}}})


# --- the contracts behind the rules -----------------------------------------------------


def test_aggregated_roles_name_every_kind_users_write(crds):
    """The user-facing roles cover every namespaced ramify.dev kind but Timeline (the
    operator's, in the storage namespace only), by the CRDs' own plurals."""
    expected = {
        crd["spec"]["names"]["plural"] for crd in crds.values()
        if crd["spec"]["group"] == "ramify.dev" and crd["spec"]["names"]["kind"] != "Timeline"
    }
    assert set(USER_KINDS) == expected


def test_pod_proxy_names_match_the_clis_requests():
    """The CLI reads storage nodes through /pods/<pod>:7071/proxy/... (the metrics listener,
    never the token-guarded API on 7070); RBAC authorizes such a request for the name
    `<pod>:7071`, which is what the connect role lists."""
    sources = "\n".join(p.read_text() for p in (REPO / "cli" / "src").rglob("*.rs"))
    ports = set(re.findall(r"/pods/\{\w+\}:(\d+)/proxy", sources))
    assert ports == {"7071"}, ports
