"""Production values of the ramify chart: the Prometheus Operator monitors (validated against
the Prometheus Operator's own CRDs), the PodDisruptionBudgets, and the scheduling values
every workload takes (topology spread, priority class, extra Pod labels and annotations)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import helm_python as helm
import pytest

import kube
from conftest import NAMESPACE, RAMIFY_CHART, REPO

WORKLOADS = {
    "operator": ("Deployment", "ramify-operator"),
    "proxy": ("Deployment", "ramify-proxy"),
    "storage": ("StatefulSet", "ramify-storage"),
}
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
POD_MONITOR_API = "monitoring.coreos.com/v1/PodMonitor"


def render(values: dict, *api_versions: str) -> kube.Rendered:
    cluster = kube.Cluster(
        kube.CURRENT_CLUSTER.kube_version, kube.CURRENT_CLUSTER.api_versions + api_versions
    )
    return kube.render(RAMIFY_CHART, values, namespace=NAMESPACE, cluster=cluster)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.fixture(scope="session")
def prometheus_crds() -> dict[str, dict]:
    """The ServiceMonitor and PodMonitor CRDs of the Prometheus Operator, from its Go
    module, fetched once into a cache by charts/tests/prometheus-crds.sh."""
    script = Path(__file__).parent / "prometheus-crds.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stderr}"
    folder = Path(done.stdout.strip())
    crds = {}
    for path in sorted(folder.glob("monitoring.coreos.com_*.yaml")):
        [crd] = kube.parse_manifests(path.read_text())
        crds[crd["metadata"]["name"]] = crd
    assert set(crds) == {"servicemonitors.monitoring.coreos.com", "podmonitors.monitoring.coreos.com"}
    return crds


# --- ServiceMonitor / PodMonitor ---------------------------------------------------------


def test_no_monitor_by_default_even_where_the_api_exists():
    out = render({}, SERVICE_MONITOR_API, POD_MONITOR_API)
    assert not out.of_kind("ServiceMonitor") and not out.of_kind("PodMonitor")


def test_service_monitors_are_valid_and_scrape_each_components_metrics_port(prometheus_crds):
    values = {"metrics": {"serviceMonitor": {
        "enabled": True, "labels": {"release": "kube-prometheus-stack"},
        "interval": "30s", "scrapeTimeout": "10s",
    }}}
    out = render(values, SERVICE_MONITOR_API)
    monitors = out.of_kind("ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        "ramify-operator", "ramify-proxy", "ramify-storage",
    ]
    for monitor in monitors:
        kube.validate_custom(monitor, prometheus_crds)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        # It selects exactly its component's Service, by a port that Service has, and the
        # port is the one the binary serves /metrics on (never the storage node's token-
        # protected API on 7070).
        services = [
            s for s in out.of_kind("Service")
            if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert [s["metadata"]["name"] for s in services] == [monitor["metadata"]["name"]]
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
        [port] = [p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert port["port"] == {"ramify-operator": 8080, "ramify-proxy": 9090, "ramify-storage": 7071}[
            monitor["metadata"]["name"]
        ]


def test_pod_monitors_are_valid_and_name_a_container_port(prometheus_crds):
    out = render({"metrics": {"podMonitor": {"enabled": True}}}, POD_MONITOR_API)
    monitors = out.of_kind("PodMonitor")
    assert len(monitors) == 3 and not out.of_kind("ServiceMonitor")
    for monitor in monitors:
        kube.validate_custom(monitor, prometheus_crds)
        [template] = [
            t for o in out.objects for _, t in kube.pod_templates(o)
            if selects(monitor["spec"]["selector"], t["metadata"]["labels"])
        ]
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in ports, (monitor["metadata"]["name"], ports)
        assert "interval" not in endpoint  # empty: Prometheus's own


def test_the_validation_sees_a_wrong_monitor(prometheus_crds):
    """validate_custom is not vacuous against these CRDs: a misspelt field and a wrong type
    in a rendered ServiceMonitor are both reported."""
    out = render({"metrics": {"serviceMonitor": {"enabled": True}}}, SERVICE_MONITOR_API)
    monitor = copy.deepcopy(out.of_kind("ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    monitor["spec"]["endpoints"][0]["path"] = 7
    with pytest.raises(AssertionError) as e:
        kube.validate_custom(monitor, prometheus_crds)
    assert "intervall" in str(e.value) and "path" in str(e.value)


@pytest.mark.parametrize("kind", ["serviceMonitor", "podMonitor"])
def test_a_monitor_without_the_prometheus_operator_api_is_refused(kind):
    with pytest.raises(helm.HelmRenderError, match=rf"metrics\.{kind}\.enabled is true, but the cluster does not serve monitoring\.coreos\.com/v1"):
        render({"metrics": {kind: {"enabled": True}}})


def test_the_group_version_alone_is_enough():
    """`helm install` sees group/versions and kinds; a tool that passes only the group/version
    (--api-versions monitoring.coreos.com/v1) gets the monitors too."""
    out = render({"metrics": {"serviceMonitor": {"enabled": True}}}, "monitoring.coreos.com/v1")
    assert len(out.of_kind("ServiceMonitor")) == 3


def test_both_monitor_kinds_at_once_are_refused():
    with pytest.raises(helm.HelmRenderError, match="scrape every target twice"):
        render(
            {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
            SERVICE_MONITOR_API, POD_MONITOR_API,
        )


# --- PodDisruptionBudgets ------------------------------------------------------------------


def test_proxy_and_operator_have_disruption_budgets_and_storage_opts_in(rendered):
    budgets = {b["metadata"]["name"]: b for b in rendered.of_kind("PodDisruptionBudget")}
    assert sorted(budgets) == ["ramify-operator", "ramify-proxy"]
    for component in ("operator", "proxy"):
        budget = budgets[f"ramify-{component}"]
        kube.validate(budget)
        # A drain takes one at a time, and never waits on a Pod that is not ready.
        assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        kind, name = WORKLOADS[component]
        workload = rendered.get(kind, name)
        assert budget["spec"]["selector"] == workload["spec"]["selector"]
        pods = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(budget["spec"]["selector"], pods)


def test_a_budget_takes_min_available_instead_and_can_be_turned_off():
    out = render({
        "storage": {"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}},
        "operator": {"podDisruptionBudget": {"enabled": False}},
    })
    budgets = {b["metadata"]["name"]: b for b in out.of_kind("PodDisruptionBudget")}
    assert sorted(budgets) == ["ramify-proxy", "ramify-storage"]
    # Kubernetes refuses a budget with both; minAvailable replaces the default maxUnavailable.
    assert budgets["ramify-storage"]["spec"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in budgets["ramify-storage"]["spec"]
    for budget in budgets.values():
        kube.validate(budget)


def test_a_budget_with_neither_bound_is_refused():
    with pytest.raises(helm.HelmRenderError, match="proxy.podDisruptionBudget is enabled with neither"):
        render({"proxy": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": None}}})


@pytest.mark.parametrize("bound", [{"maxUnavailable": -1}, {"maxUnavailable": "half"}, {"minAvailable": "1.5"}])
def test_the_schema_refuses_a_bound_that_is_no_count_or_percentage(bound):
    with pytest.raises(helm.HelmValuesError):
        render({"proxy": {"podDisruptionBudget": {"enabled": True, **bound}}})


# --- scheduling, labels and annotations of every workload ------------------------------------


def test_every_workload_takes_spread_priority_labels_and_annotations():
    zone = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    own_selector = {
        "maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"team": "db"}},
    }
    values = {
        component: {
            "topologySpreadConstraints": [zone, own_selector],
            "priorityClassName": f"ramify-{component}-critical",
            "podLabels": {"team": "db", "example.com/cost-center": "42"},
            "podAnnotations": {"example.com/owner": f"{component} team"},
        }
        for component in WORKLOADS
    }
    out = render(values)
    for component, (kind, name) in WORKLOADS.items():
        workload = out.get(kind, name)
        kube.validate(workload)
        template = workload["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert labels["team"] == "db" and labels["example.com/cost-center"] == "42"
        # The chart's own labels stay, so the selector still matches.
        assert selects(workload["spec"]["selector"], labels)
        assert template["metadata"]["annotations"] == {"example.com/owner": f"{component} team"}
        spec = template["spec"]
        assert spec["priorityClassName"] == f"ramify-{component}-critical"
        first, second = spec["topologySpreadConstraints"]
        # Without a labelSelector the constraint counts this component's Pods...
        assert first == {**zone, "labelSelector": workload["spec"]["selector"]}
        # ...and one given its own keeps it.
        assert second == own_selector


def test_defaults_add_no_scheduling_fields(rendered_default):
    for kind, name in WORKLOADS.values():
        template = rendered_default.get(kind, name)["spec"]["template"]
        assert "annotations" not in template["metadata"]
        assert "priorityClassName" not in template["spec"]
        assert "topologySpreadConstraints" not in template["spec"]


@pytest.mark.parametrize("label", ["app.kubernetes.io/component", "app.kubernetes.io/name", "helm.sh/chart"])
def test_a_pod_label_the_chart_sets_itself_is_refused(label):
    with pytest.raises(helm.HelmRenderError, match=rf"proxy\.podLabels\.{label}: the chart sets this label itself"):
        render({"proxy": {"podLabels": {label: "x"}}})


def test_the_schema_refuses_a_non_string_label_and_a_bad_priority_class():
    with pytest.raises(helm.HelmValuesError):
        render({"operator": {"podLabels": {"tier": {"nested": 1}}}})
    with pytest.raises(helm.HelmValuesError):
        render({"storage": {"priorityClassName": "Not_A_Name"}})
