"""The ramify chart: lint, valid Kubernetes objects, Pod Security `restricted`, and the
names, flags, ports and permissions docs/kubernetes.md fixes."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

import kube
from conftest import NAMESPACE, RAMIFY_CHART, VALUE_SETS
from pod_security import restricted_violations

CONTAINER_ARGS = "args"
CLUSTER_SCOPED = (
    "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
)


def container(obj: dict, name: str) -> dict:
    [c] = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def flags(c: dict) -> dict[str, str | None]:
    """--name=value arguments as {name: value}; a bare --name maps to None."""
    out: dict[str, str | None] = {}
    for arg in c[CONTAINER_ARGS]:
        assert arg.startswith("--"), f"not a flag: {arg}"
        name, eq, value = arg[2:].partition("=")
        out[name] = value if eq else None
    return out


# --- the chart as a whole ---------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_lint_strict_is_clean(value_set):
    assert kube.lint(RAMIFY_CHART, VALUE_SETS[value_set], namespace=NAMESPACE) == []


def test_every_object_is_a_valid_kubernetes_object(rendered):
    assert rendered.objects, "the chart rendered nothing"
    for obj in rendered.objects:
        kube.validate(obj)


def test_every_pod_passes_the_restricted_profile(rendered):
    templates = [t for obj in rendered.objects for t in kube.pod_templates(obj)]
    assert {name for name, _ in templates} == {
        "Deployment/ramify-operator", "Deployment/ramify-proxy", "StatefulSet/ramify-storage",
    }
    for name, template in templates:
        assert restricted_violations(template) == [], name
        for c in template["spec"]["containers"]:
            # Not part of the profile, but every Ramify process can live without writing
            # to its image.
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (name, c["name"])


def test_the_check_sees_a_violation_in_a_rendered_pod(rendered_default):
    """The restricted check is not vacuous on what the chart renders: weaken one field of a
    real Pod template and it objects."""
    import copy

    deployment = copy.deepcopy(rendered_default.get("Deployment", "ramify-operator"))
    template = deployment["spec"]["template"]
    del template["spec"]["securityContext"]["seccompProfile"]
    template["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_RAW"]
    found = restricted_violations(template)
    assert any(f.startswith("seccomp:") for f in found), found
    assert any("adds NET_RAW" in f for f in found), found


def test_the_objects_are_the_contracts(rendered):
    names = sorted((o["kind"], o["metadata"]["name"]) for o in rendered.objects)
    assert names == sorted([
        ("ClusterRole", f"ramify-operator-{NAMESPACE}"),
        ("ClusterRole", f"ramify-{NAMESPACE}-edit"),
        ("ClusterRole", f"ramify-{NAMESPACE}-view"),
        ("ClusterRoleBinding", f"ramify-operator-{NAMESPACE}"),
        ("Deployment", "ramify-operator"),
        ("Deployment", "ramify-proxy"),
        ("NetworkPolicy", "ramify-compute"),
        ("NetworkPolicy", "ramify-operator"),
        ("NetworkPolicy", "ramify-proxy"),
        ("NetworkPolicy", "ramify-storage"),
        ("PodDisruptionBudget", "ramify-operator"),
        ("PodDisruptionBudget", "ramify-proxy"),
        ("Role", "ramify-connect"),
        ("Role", "ramify-operator"),
        ("RoleBinding", "ramify-operator"),
        ("Service", "ramify-operator"),
        ("Service", "ramify-proxy"),
        ("Service", "ramify-storage"),
        ("ServiceAccount", "ramify-operator"),
        ("ServiceAccount", "ramify-proxy"),
        ("ServiceAccount", "ramify-storage"),
        ("StatefulSet", "ramify-storage"),
        ("ValidatingAdmissionPolicy", f"ramify-protected-branches-{NAMESPACE}"),
        ("ValidatingAdmissionPolicyBinding", f"ramify-protected-branches-{NAMESPACE}"),
    ])
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "ramify"
        assert labels["app.kubernetes.io/instance"] == "ramify"
        if obj["kind"] in CLUSTER_SCOPED:
            # Named after the release namespace, so two installs do not collide.
            name = obj["metadata"]["name"]
            assert name.endswith(f"-{NAMESPACE}") or name.startswith(f"ramify-{NAMESPACE}-"), name
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE


# --- operator ---------------------------------------------------------------------------


def test_operator_deployment(rendered):
    values = rendered.values
    deployment = rendered.get("Deployment", "ramify-operator")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert spec["serviceAccountName"] == "ramify-operator"
    c = container(deployment, "operator")
    assert flags(c) == {
        "storage-service": "ramify-storage",
        "storage-port": "7070",
        "compute-image": values["compute"]["image"],
        "compute-image-pull-policy": values["compute"]["pullPolicy"],
        "postgres-version": "15",
        "default-suspend-after": "5m",
        "proxy-token-secret": "ramify-proxy-token",
        "storage-token-secret": "ramify-storage-token",
        "tls-ca-secret": "ramify-ca",
        "listen": "0.0.0.0:8080",
        "cluster-domain": "cluster.local",
        "log-format": "text",
    }
    assert c["env"] == [{
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = rendered.get("Service", "ramify-operator")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_leader_election_adds_the_flag_its_lease_and_rolling_updates():
    out = kube.render(
        RAMIFY_CHART, {"operator": {"leaderElection": True, "replicas": 2}}, namespace=NAMESPACE
    )
    deployment = out.get("Deployment", "ramify-operator")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # the default RollingUpdate
    assert "leader-election" in flags(container(deployment, "operator"))
    rules = out.get("Role", "ramify-operator")["rules"]
    lease_rules = [r for r in rules if r["resources"] == ["leases"]]
    assert lease_rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["ramify-operator"], "verbs": ["get", "update", "patch"]},
    ]
    for obj in out.objects:
        kube.validate(obj)


def test_no_lease_access_without_leader_election(rendered_default):
    rules = rendered_default.get("Role", "ramify-operator")["rules"]
    assert not [r for r in rules if "leases" in r["resources"]]
    assert "leader-election" not in flags(container(
        rendered_default.get("Deployment", "ramify-operator"), "operator"))


def test_two_operators_without_a_leader_are_refused():
    with pytest.raises(helm.HelmRenderError, match="leaderElection"):
        kube.render(RAMIFY_CHART, {"operator": {"replicas": 2}}, namespace=NAMESPACE)


# --- storage ----------------------------------------------------------------------------


def test_storage_statefulset(rendered):
    values = rendered.values
    sts = rendered.get("StatefulSet", "ramify-storage")
    assert sts["spec"]["serviceName"] == "ramify-storage"
    pod = sts["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ramify-storage"
    assert pod["automountServiceAccountToken"] is False
    sc = pod["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (999, 999, 999)
    assert sc["fsGroupChangePolicy"] == "OnRootMismatch"
    c = container(sts, "storage")
    assert c["command"] == ["/usr/local/bin/ramify-storage"]
    assert flags(c) == {
        "data-dir": "/var/lib/ramify",
        "listen": "0.0.0.0:7070",
        "metrics-listen": "0.0.0.0:7071",
        "pg-bin": "/usr/lib/postgresql/15/bin",
        "restore-window": values["storage"]["restoreWindow"],
        "snapshot-interval": values["storage"]["snapshotInterval"],
        "snapshot-wal-bytes": "256MiB",
        "reserve": "default",
        "warm-standbys": "true",
        "log-format": "text",
    }
    assert {"name": "data", "mountPath": "/var/lib/ramify"} in c["volumeMounts"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    assert c["ports"] == [
        {"name": "http", "containerPort": 7070, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 7071, "protocol": "TCP"},
    ]
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == values["storage"]["size"]
    assert "storageClassName" not in claim["spec"]  # empty value: the cluster's default

    service = rendered.get("Service", "ramify-storage")
    assert service["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 7070), ("metrics", 7071)]
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("reserve", ["5%", "0.5%", "2GiB", "0"])
def test_storage_reserve_reaches_the_node(reserve):
    out = kube.render(RAMIFY_CHART, {"storage": {"reserve": reserve}}, namespace=NAMESPACE)
    assert flags(container(out.get("StatefulSet", "ramify-storage"), "storage"))["reserve"] == reserve


def test_warm_standbys_can_be_turned_off():
    out = kube.render(RAMIFY_CHART, {"storage": {"warmStandbys": False}}, namespace=NAMESPACE)
    assert flags(container(out.get("StatefulSet", "ramify-storage"), "storage"))["warm-standbys"] == "false"


BACKUP_VALUES = {"storage": {"backup": {
    "repository": "s3://bank-backups/ramify/",
    "endpoint": "seaweedfs.backups.svc:8333",
    "uriStyle": "path",
    "credentialsSecret": "s3-keys",
    "caSecret": {"name": "s3-ca", "key": "tls.ca"},
}}}


def test_a_backup_repository_reaches_each_node_under_its_own_prefix():
    out = kube.render(RAMIFY_CHART, BACKUP_VALUES, namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER)
    sts = out.get("StatefulSet", "ramify-storage")
    c = container(sts, "storage")
    f = flags(c)
    # The kubelet expands $(POD_NAME) from the env entry of that name.
    assert f["backup-repo"] == "s3://bank-backups/ramify/$(POD_NAME)"
    assert f["node-name"] == "$(POD_NAME).$(POD_NAMESPACE)"
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in c["env"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert (f["backup-endpoint"], f["backup-region"], f["backup-uri-style"]) == (
        "seaweedfs.backups.svc:8333", "us-east-1", "path")
    assert f["backup-full-after"] == "1GiB"
    assert "recover-if-empty" in f and f["recover-if-empty"] is None
    assert f["backup-ca-file"] == "/etc/ramify/backup-ca/ca.crt"
    [vol] = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "backup-ca"]
    assert vol["secret"] == {"secretName": "s3-ca", "items": [{"key": "tls.ca", "path": "ca.crt"}]}
    assert {"name": "backup-ca", "mountPath": "/etc/ramify/backup-ca", "readOnly": True} in c["volumeMounts"]
    # Keys only by reference; the cipher passphrase is optional.
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"}
    assert refs["RAMIFY_BACKUP_CIPHER_PASS"] == {
        "name": "s3-keys", "key": "RAMIFY_BACKUP_CIPHER_PASS", "optional": True}
    assert all("value" not in e for e in c["env"]), c["env"]
    assert not restricted_violations(sts["spec"]["template"])
    with helm.Chart.load(str(RAMIFY_CHART)) as chart:
        chart.validate_schema(BACKUP_VALUES)


def test_no_backup_flags_without_a_repository(rendered_default):
    c = container(rendered_default.get("StatefulSet", "ramify-storage"), "storage")
    assert not [f for f in flags(c) if f.startswith(("backup", "recover", "node-name"))]
    assert not [v for v in rendered_default.get("StatefulSet", "ramify-storage")["spec"]["template"]["spec"]["volumes"]
                if v["name"] == "backup-ca"]


def test_a_repository_without_credentials_is_refused():
    values = {"storage": {"backup": {"repository": "s3://bank-backups/p"}}}
    with pytest.raises(Exception, match="credentialsSecret"):
        kube.render(RAMIFY_CHART, values, namespace=NAMESPACE)


def test_storage_api_token_is_the_operators_secret(rendered):
    """The storage node refuses to start without a token; it reads the one Secret the
    operator creates and uses, and the chart itself renders no token (a random value in a
    template would change on every upgrade and under Argo CD)."""
    c = container(rendered.get("StatefulSet", "ramify-storage"), "storage")
    assert {"name": "RAMIFY_STORAGE_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "ramify-storage-token", "key": "token"}}} in c["env"]
    assert "token-file" not in flags(c), "Secret files are group-readable under fsGroup"
    op = flags(container(rendered.get("Deployment", "ramify-operator"), "operator"))
    assert op["storage-token-secret"] == "ramify-storage-token"
    assert [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == "ramify-storage-token"] == []
    # No token value is rendered anywhere: every environment variable comes from a reference.
    assert all("value" not in e for e in c["env"]), c["env"]


def test_storage_class_and_size_come_from_values():
    out = kube.render(
        RAMIFY_CHART,
        {"storage": {"storageClassName": "xfs-reflink", "size": "200Gi", "restoreWindow": "30d"}},
        namespace=NAMESPACE,
    )
    sts = out.get("StatefulSet", "ramify-storage")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "xfs-reflink"
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert flags(container(sts, "storage"))["restore-window"] == "30d"
    assert "storageClassName is empty" not in out.notes


def test_storage_postgres_binaries_follow_the_compute_version():
    out = kube.render(
        RAMIFY_CHART, {"compute": {"image": "postgres:16", "postgresVersion": 16}},
        namespace=NAMESPACE,
    )
    assert flags(container(out.get("StatefulSet", "ramify-storage"), "storage"))["pg-bin"] == \
        "/usr/lib/postgresql/16/bin"
    operator = flags(container(out.get("Deployment", "ramify-operator"), "operator"))
    assert (operator["compute-image"], operator["postgres-version"]) == ("postgres:16", "16")


# --- proxy ------------------------------------------------------------------------------


def test_proxy(rendered):
    deployment = rendered.get("Deployment", "ramify-proxy")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ramify-proxy"
    assert pod["automountServiceAccountToken"] is False
    # The operator finds the proxies by this label (--proxy-selector's default).
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "proxy"
    c = container(deployment, "proxy")
    assert flags(c) == {
        "operator-url": f"http://ramify-operator.{NAMESPACE}.svc.cluster.local:8080",
        "listen-address": "0.0.0.0",
        "metrics-listen": "0.0.0.0:9090",
        "sync-interval": "2s",
        "startup-timeout": "10s",
        "shutdown-delay": "5s",
        "drain-timeout": "40s",
        "max-connections-per-branch": "100",
        "max-connections": "1000",
        "tls-ca-cert": "/etc/ramify/tls-ca/tls.crt",
        "tls-ca-key": "/etc/ramify/tls-ca/tls.key",
        "cluster-domain": "cluster.local",
    }
    # The CA the operator creates (or cert-manager issues), key readable by the proxy only.
    assert c["volumeMounts"] == [{"name": "tls-ca", "mountPath": "/etc/ramify/tls-ca", "readOnly": True}]
    assert pod["volumes"] == [{"name": "tls-ca", "secret": {
        "secretName": "ramify-ca", "defaultMode": 0o440,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }}]
    # Each proxy names itself (its Pod name) in its activity reports to the operator,
    # which decides idleness across all proxy replicas.
    assert c["env"] == [{
        "name": "RAMIFY_PROXY_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }, {
        "name": "RAMIFY_PROXY_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "ramify-proxy-token", "key": "token"}},
    }]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = rendered.get("Service", "ramify-proxy")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_tls_required_and_a_custom_ca_secret_reach_proxy_and_operator():
    out = kube.render(RAMIFY_CHART, {"tls": {"required": True, "caSecretName": "my-ca"}}, namespace=NAMESPACE)
    proxy = out.get("Deployment", "ramify-proxy")
    assert "tls-required" in flags(container(proxy, "proxy"))
    assert proxy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == "my-ca"
    operator = out.get("Deployment", "ramify-operator")
    assert flags(container(operator, "operator"))["tls-ca-secret"] == "my-ca"


def test_a_cert_manager_issuer_issues_the_ca_and_the_operator_only_waits_for_it(rendered):
    assert "tls-ca-issued" not in flags(container(rendered.get("Deployment", "ramify-operator"), "operator"))
    assert not [o for o in rendered.objects if o["kind"] == "Certificate"]
    out = kube.render(RAMIFY_CHART, {"tls": {"issuerRef": {"name": "org-ca", "kind": "ClusterIssuer"}}},
                      namespace=NAMESPACE)
    cert = out.get("Certificate", "ramify-ca")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["isCA"] is True
    assert cert["spec"]["secretName"] == "ramify-ca"  # the Secret the proxy mounts
    assert cert["spec"]["issuerRef"] == {"name": "org-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert cert["spec"]["privateKey"] == {"algorithm": "ECDSA", "size": 256}
    assert "tls-ca-issued" in flags(container(out.get("Deployment", "ramify-operator"), "operator"))
    with pytest.raises(Exception, match="kind"):
        kube.render(RAMIFY_CHART, {"tls": {"issuerRef": {"name": "x", "kind": "Vault"}}}, namespace=NAMESPACE)


def test_proxy_connection_caps_and_startup_timeout_reach_the_flags():
    out = kube.render(RAMIFY_CHART, {"proxy": {
        "startupTimeout": "3s", "maxConnectionsPerBranch": 20, "maxConnections": 5000,
        "shutdownDelay": "0s", "drainTimeout": "15s",
    }}, namespace=NAMESPACE)
    proxy = flags(container(out.get("Deployment", "ramify-proxy"), "proxy"))
    assert (proxy["shutdown-delay"], proxy["drain-timeout"]) == ("0s", "15s")
    # Large numbers stay integers (Helm reads YAML numbers as float64).
    assert (proxy["startup-timeout"], proxy["max-connections-per-branch"], proxy["max-connections"]) == (
        "3s", "20", "5000",
    )


def test_compute_max_resources_reach_the_operator_only_when_set(rendered):
    assert not {"max-compute-cpu", "max-compute-memory"} & set(
        flags(container(rendered.get("Deployment", "ramify-operator"), "operator")))
    out = kube.render(RAMIFY_CHART, {"compute": {"maxResources": {"cpu": "2", "memory": "4Gi"}}},
                      namespace=NAMESPACE)
    op = flags(container(out.get("Deployment", "ramify-operator"), "operator"))
    assert (op["max-compute-cpu"], op["max-compute-memory"]) == ("2", "4Gi")
    with pytest.raises(Exception, match="maxResources"):
        kube.render(RAMIFY_CHART, {"compute": {"maxResources": {"gpu": "1"}}}, namespace=NAMESPACE)


def test_following_is_refused_unless_the_administrator_lists_source_hosts(rendered):
    args = container(rendered.get("Deployment", "ramify-operator"), "operator")[CONTAINER_ARGS]
    assert not [a for a in args if a.startswith("--follow-allowed-host")]
    out = kube.render(RAMIFY_CHART, {"following": {"allowedHosts": ["db.prod.svc", "*.rds.amazonaws.com"]}},
                      namespace=NAMESPACE)
    args = container(out.get("Deployment", "ramify-operator"), "operator")[CONTAINER_ARGS]
    assert [a for a in args if a.startswith("--follow-allowed-host")] == [
        "--follow-allowed-host=db.prod.svc", "--follow-allowed-host=*.rds.amazonaws.com",
    ]
    # A pattern the operator would not read (a list, a URI) is refused by the schema.
    with pytest.raises(Exception, match="allowedHosts"):
        kube.render(RAMIFY_CHART, {"following": {"allowedHosts": ["postgresql://db"]}}, namespace=NAMESPACE)


# --- images -----------------------------------------------------------------------------


def images(rendered: kube.Rendered) -> dict[str, tuple[str, str]]:
    out = {}
    for obj in rendered.objects:
        for _, template in kube.pod_templates(obj):
            for c in template["spec"]["containers"]:
                out[c["name"]] = (c["image"], c["imagePullPolicy"])
    return out


def test_default_images_are_the_released_ones(rendered_default):
    assert images(rendered_default) == {
        "operator": ("ghcr.io/ramify/ramify-operator:0.1.0", "IfNotPresent"),
        "proxy": ("ghcr.io/ramify/ramify-proxy:0.1.0", "IfNotPresent"),
        "storage": ("ghcr.io/ramify/ramify-storage:0.1.0", "IfNotPresent"),
    }


def test_the_test_cluster_pulls_nothing():
    out = kube.render(RAMIFY_CHART, VALUE_SETS["test-cluster"], namespace=NAMESPACE)
    assert images(out) == {
        "operator": ("ramify.test/ramify-operator:dev", "Never"),
        "proxy": ("ramify.test/ramify-proxy:dev", "Never"),
        "storage": ("ramify.test/ramify-storage:dev", "Never"),
    }
    operator = flags(container(out.get("Deployment", "ramify-operator"), "operator"))
    assert operator["compute-image"] == "ramify.test/postgres:15"
    assert operator["compute-image-pull-policy"] == "Never"


def test_a_component_tag_overrides_the_common_one():
    out = kube.render(
        RAMIFY_CHART, {"image": {"tag": "0.2.0"}, "proxy": {"image": {"tag": "0.2.1"}}},
        namespace=NAMESPACE,
    )
    assert images(out)["operator"][0] == "ghcr.io/ramify/ramify-operator:0.2.0"
    assert images(out)["proxy"][0] == "ghcr.io/ramify/ramify-proxy:0.2.1"


def test_pull_secrets_reach_every_pod():
    out = kube.render(RAMIFY_CHART, {"image": {"pullSecrets": ["regcred"]}}, namespace=NAMESPACE)
    for obj in out.objects:
        for name, template in kube.pod_templates(obj):
            assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}], name


# --- RBAC -------------------------------------------------------------------------------


@pytest.mark.parametrize("template, at_least", [("rbac.yaml", 10), ("user-rbac.yaml", 7)])
def test_every_rbac_rule_says_why(template, at_least):
    """A rule without a comment right above it is a rule nobody can review."""
    lines = (RAMIFY_CHART / "templates" / template).read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rules) >= at_least
    for i in rules:
        above = lines[i - 1].strip()
        assert above.startswith("#"), f"{template}:{i + 1}: rule without a comment above it"


def test_operator_rbac_is_least_privilege(rendered_default):
    cluster_rules = rendered_default.get("ClusterRole", f"ramify-operator-{NAMESPACE}")["rules"]
    ns_rules = rendered_default.get("Role", "ramify-operator")["rules"]
    for rule in cluster_rules + ns_rules:
        # No wildcard anywhere, "*/status" included.
        for key in ("verbs", "resources", "apiGroups"):
            assert not any("*" in x for x in rule[key]), rule
        assert not {"deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule

    def verbs(rules, group, resource):
        return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}

    # Branches everywhere, with their status and finalizers: created as a restore's backup
    # branch, deleted when their expiry passes.
    assert verbs(cluster_rules, "ramify.dev", "databasebranches") == {
        "get", "list", "watch", "patch", "update", "create", "delete"}
    assert verbs(cluster_rules, "ramify.dev", "databasebranches/status") == {"get", "patch", "update"}
    assert verbs(cluster_rules, "ramify.dev", "databasebranches/finalizers") == {"update"}
    # Checkpoints and restores everywhere: never created or deleted by the operator.
    for plural in ("branchcheckpoints", "branchrestores"):
        assert verbs(cluster_rules, "ramify.dev", plural) == {"get", "list", "watch", "patch", "update"}
        assert verbs(cluster_rules, "ramify.dev", f"{plural}/status") == {"get", "patch", "update"}
        assert verbs(cluster_rules, "ramify.dev", f"{plural}/finalizers") == {"update"}
    # Nothing else of ramify.dev cluster-wide.
    assert {res for r in cluster_rules if "ramify.dev" in r["apiGroups"] for res in r["resources"]} == {
        f"{plural}{sub}" for plural in ("databasebranches", "branchcheckpoints", "branchrestores")
        for sub in ("", "/status", "/finalizers")}
    # Events for all three kinds, in any namespace.
    assert verbs(cluster_rules, "events.k8s.io", "events") == {"create", "patch"}
    # Reading every Secret of the cluster is not needed to write a branch's own.
    assert not {"list", "watch"} & verbs(cluster_rules, "", "secrets")
    assert verbs(cluster_rules, "", "namespaces") == {"get", "list", "watch"}
    # Pods and Timelines only in the storage namespace.
    assert not verbs(cluster_rules, "", "pods")
    assert not verbs(cluster_rules, "ramify.dev", "timelines")
    assert {"create", "delete"} <= verbs(ns_rules, "", "pods")
    assert {"create", "delete"} <= verbs(ns_rules, "ramify.dev", "timelines")
    assert {"get", "list", "watch"} <= verbs(ns_rules, "ramify.dev", "timelines")

    bound = set()
    for binding in rendered_default.of_kind("RoleBinding") + rendered_default.of_kind("ClusterRoleBinding"):
        bound |= {s["name"] for s in binding["subjects"]}
    assert bound == {"ramify-operator"}, "only the operator talks to the API server"
    for sa in ("ramify-proxy", "ramify-storage"):
        assert rendered_default.get("ServiceAccount", sa)["automountServiceAccountToken"] is False


def test_operator_rbac_names_the_real_branch_kinds(rendered_default, crds):
    """The ClusterRole's ramify.dev resources are the CRDs' own plurals: every namespaced
    kind but Timeline (storage namespace only, the Role's), with its subresources."""
    cluster_rules = rendered_default.get("ClusterRole", f"ramify-operator-{NAMESPACE}")["rules"]
    in_role = {res for r in cluster_rules if "ramify.dev" in r["apiGroups"] for res in r["resources"]}
    expected = set()
    for crd in crds.values():
        spec = crd["spec"]
        if spec["group"] != "ramify.dev" or spec["names"]["kind"] == "Timeline":
            continue
        assert spec["scope"] == "Namespaced", crd["metadata"]["name"]
        plural = spec["names"]["plural"]
        expected |= {plural, f"{plural}/finalizers"}
        [version] = [v for v in spec["versions"] if v["storage"]]
        if "status" in version.get("subresources", {}):
            expected.add(f"{plural}/status")
    assert in_role == expected


# --- network policies -------------------------------------------------------------------


def test_network_policies(rendered):
    def policy(name):
        spec = rendered.get("NetworkPolicy", name)["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        return spec

    def from_component(rule):
        return [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]]

    compute = policy("ramify-compute")
    assert compute["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "ramify", "app.kubernetes.io/component": "compute"}
    [rule] = compute["ingress"]
    assert from_component(rule) == ["proxy"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]

    # The API port is the operator's alone; no one is let in on the metrics port unless
    # monitoringFrom names them.
    [rule] = policy("ramify-storage")["ingress"]
    assert from_component(rule) == ["operator"]
    assert rule["ports"] == [{"port": 7070, "protocol": "TCP"}]

    [rule] = policy("ramify-operator")["ingress"]
    assert from_component(rule) == ["proxy"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]

    # Anyone, on any port: the branch listeners open and close at run time.
    assert policy("ramify-proxy")["ingress"] == [{}]


def test_monitoring_peers_and_disabling_policies():
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    out = kube.render(RAMIFY_CHART, {"networkPolicy": {"monitoringFrom": [peer]}}, namespace=NAMESPACE)
    assert peer in out.get("NetworkPolicy", "ramify-operator")["spec"]["ingress"][0]["from"]
    # Storage: monitoring reaches the metrics port only, never the API port.
    api, metrics = out.get("NetworkPolicy", "ramify-storage")["spec"]["ingress"]
    assert peer not in api["from"] and api["ports"] == [{"port": 7070, "protocol": "TCP"}]
    assert metrics == {"from": [peer], "ports": [{"port": 7071, "protocol": "TCP"}]}
    for obj in out.of_kind("NetworkPolicy"):
        kube.validate(obj)
    out = kube.render(RAMIFY_CHART, {"networkPolicy": {"enabled": False}}, namespace=NAMESPACE)
    assert out.of_kind("NetworkPolicy") == []


# --- values schema, NOTES -----------------------------------------------------------------


@pytest.mark.parametrize("values, complaint", [
    ({"operator": {"replica": 2}}, "replica"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"compute": {"defaultSuspendAfter": "five minutes"}}, "defaultSuspendAfter"),
    ({"storage": {"size": "lots"}}, "size"),
    ({"storage": {"reserve": "a bit"}}, "reserve"),
    ({"storage": {"reserve": "5 %"}}, "reserve"),
    ({"storage": {"warmStandbys": "yes"}}, "warmStandbys"),
    ({"storage": {"backup": {"repository": "bank-backups/ramify"}}}, "repository"),
    ({"storage": {"backup": {"uriStyle": "virtual"}}}, "uriStyle"),
    ({"storage": {"backup": {"credentials": "s3-keys"}}}, "credentials"),
    ({"proxy": {"maxConnectionsPerBranch": 0}}, "maxConnectionsPerBranch"),
    ({"proxy": {"maxConnections": "many"}}, "maxConnections"),
    ({"proxy": {"startupTimeout": "ten seconds"}}, "startupTimeout"),
    ({"proxy": {"drainTimeout": "forever"}}, "drainTimeout"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"networkPolicy": {"monitoringFrom": [{"podSelektor": {}}]}}, "podSelektor"),
    ({"admission": {"protectBranch": False}}, "protectBranch"),
    ({"admission": {"protectBranches": "no"}}, "protectBranches"),
    ({"rbac": {"aggregateToDefaultRole": False}}, "aggregateToDefaultRole"),
    ({"rbac": {"aggregateToDefaultRoles": "yes"}}, "aggregateToDefaultRoles"),
    ({"rbac": {"connect": {"subject": []}}}, "subject"),
    ({"rbac": {"connect": {"subjects": {"kind": "Group", "name": "developers"}}}}, "/rbac/connect/subjects"),
])
def test_values_schema_refuses_mistakes(values, complaint):
    with helm.Chart.load(str(RAMIFY_CHART)) as chart:
        with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
            chart.validate_schema(values)


def test_notes_show_how_to_create_a_first_branch(rendered_default):
    notes = rendered_default.notes
    assert "kind: DatabaseBranch" in notes
    assert "postgresVersion: 15" in notes
    assert "--for=condition=Ready" in notes
    assert "main-postgres" in notes
    # The snippets in NOTES are real DatabaseBranch objects.
    docs = re.findall(r"cat <<'YAML' \| kubectl apply -f -\n(.*?)\n  YAML", notes, re.S)
    assert len(docs) == 2
    for doc in docs:
        [obj] = kube.parse_manifests("\n".join(line[2:] for line in doc.splitlines()))
        assert obj["apiVersion"] == "ramify.dev/v1alpha1"


def test_notes_branches_validate_against_the_crd(rendered_default, crds):
    docs = re.findall(r"cat <<'YAML' \| kubectl apply -f -\n(.*?)\n  YAML", rendered_default.notes, re.S)
    for doc in docs:
        [obj] = kube.parse_manifests("\n".join(line[2:] for line in doc.splitlines()))
        kube.validate_custom(obj, crds)
