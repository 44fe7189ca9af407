"""The Grafana dashboard of the ramify chart: its ConfigMap, its JSON, and that every metric
its queries name is one the binaries really export. The names are scraped from /metrics
of the real binaries (built by cargo, started by this test on loopback): the storage node
on a temporary data directory, the proxy with no operator to sync from, and the operator
as a standby replica (--leader-election) whose Kubernetes API does not answer, which
serves /metrics while it waits for the lease."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import kube
from conftest import NAMESPACE, RAMIFY_CHART, REPO

DASHBOARD = RAMIFY_CHART / "dashboards" / "ramify.json"
BINARIES = {"operator": "ramify-operator", "proxy": "ramify-proxy", "storage": "ramify-storage"}
# Families that exist only once something happened (a pass of the storage node's space
# accounting): the scrape waits for them rather than for a fixed time.
EVENTUAL = {"storage": {"ramify_storage_logical_bytes"}}
TOKEN = "chart-test-token-0123456789abcdefghijklmnop"
METRIC = re.compile(r"\bramify_[a-z0-9_]+\b")
# PromQL words that are not metric names but could sit where one does.
PROMQL_WORDS = {"by", "without", "sum", "max", "min", "rate", "increase", "histogram_quantile"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(d: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every query the dashboard runs: its panels' and its variables'."""
    out = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in panels(d) for t in p.get("targets", [])
    ]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append((f"variable {v['name']}", q["query"] if isinstance(q, dict) else q))
    return out


def families(exposition: str) -> dict[str, str]:
    """Metric family -> type, from the `# TYPE` lines of a Prometheus text exposition."""
    out = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            out[name] = kind
    return out


def series_names(fams: dict[str, str]) -> set[str]:
    """The names a query can use: a family, and for histograms and summaries the series
    Prometheus stores for them."""
    out = set()
    for name, kind in fams.items():
        out.add(name)
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            out |= {f"{name}_sum", f"{name}_count"}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, process: subprocess.Popen, log: Path, want: set[str], timeout: float = 60) -> str:
    """/metrics once it answers and names every family in `want`."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the binary exited ({process.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
            if want <= set(families(text)):
                return text
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(
        f"{url} did not export {sorted(want - set(families(text)))} within {timeout}s:\n"
        f"{text}\n--- log ---\n{log.read_text()}"
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Metric families (name -> type) each binary exports, from its real /metrics."""
    cargo = os.environ.get("CARGO", "cargo")
    packages = [arg for name in ("ramify-operator", "ramify-proxy", "ramify-storage") for arg in ("-p", name)]
    build = subprocess.run([cargo, "build", "-q", *packages, "--bins"], cwd=REPO, capture_output=True, text=True)
    assert build.returncode == 0, f"cargo build of the binaries failed:\n{build.stderr}"
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
    tmp = tmp_path_factory.mktemp("metrics")
    closed = free_port()  # nothing listens here: the proxy's operator, the operator's API server
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{closed}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "nobody", "user": {"token": TOKEN}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
    }))
    ports = {name: free_port() for name in BINARIES}
    (tmp / "data").mkdir()
    commands = {
        "operator": [f"--namespace={NAMESPACE}", "--leader-election", f"--listen=127.0.0.1:{ports['operator']}"],
        "proxy": [
            f"--operator-url=http://127.0.0.1:{closed}", "--listen-address=127.0.0.1",
            f"--metrics-listen=127.0.0.1:{ports['proxy']}",
        ],
        "storage": [
            f"--data-dir={tmp / 'data'}", f"--listen=127.0.0.1:{free_port()}",
            f"--metrics-listen=127.0.0.1:{ports['storage']}",
        ],
    }
    env = {
        **os.environ, "KUBECONFIG": str(kubeconfig), "RAMIFY_PROXY_TOKEN": TOKEN,
        "RAMIFY_STORAGE_TOKEN": TOKEN, "RUST_LOG": "info",
    }
    started: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for name, args in commands.items():
            log = tmp / f"{name}.log"
            with log.open("w") as out:
                started[name] = (
                    subprocess.Popen([str(target / BINARIES[name]), *args], env=env, stdout=out, stderr=subprocess.STDOUT),
                    log,
                )
        result = {}
        for name, (process, log) in started.items():
            text = scrape(f"http://127.0.0.1:{ports[name]}/metrics", process, log, EVENTUAL.get(name, set()))
            result[name] = families(text)
            assert result[name], f"{name}: /metrics has no # TYPE lines:\n{text}"
        return result
    finally:
        for process, _ in started.values():
            process.terminate()
        for process, _ in started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- the dashboard's JSON -------------------------------------------------------------------


def test_the_dashboard_parses_and_every_panel_queries_the_chosen_data_source():
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(d):
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["targets"], f"panel {p['title']!r} queries nothing"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_the_dashboard_shows_what_the_issue_asks_for():
    """Branches by phase, fork and wake latency histograms, storage bytes (logical,
    exclusive, history) and errors, each in a panel of its own."""
    by_title = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels(dashboard())}
    assert "ramify_operator_branches_by_phase" in by_title["Branches by phase"]
    assert "ramify_storage_create_duration_seconds_bucket" in by_title["Fork latency"]
    assert "ramify_operator_wake_duration_seconds_bucket" in by_title["Wake latency"]
    for kind in ("logical", "exclusive", "history"):
        assert f"ramify_storage_{kind}_bytes" in by_title["Storage bytes"]
    assert all(m in by_title["Errors"] for m in (
        "ramify_storage_create_errors_total", "ramify_operator_reconcile_errors_total",
        "ramify_proxy_wake_failures_total",
    ))


def test_every_query_is_scoped_to_the_chosen_namespaces():
    """With several installs scraped by one Prometheus, a panel sums only the chosen ones."""
    for where, expr in queries(dashboard()):
        if where.startswith("variable"):
            continue
        for m in re.finditer(r"\b(ramify_[a-z0-9_]+)(\{[^}]*\})?", expr):
            assert m.group(2) and 'namespace=~"$namespace"' in m.group(2), f"{where}: {m.group(0)}"


# --- names against the binaries ---------------------------------------------------------------


def test_every_metric_the_dashboard_names_is_exported(exported):
    names = set()
    for fams in exported.values():
        names |= series_names(fams)
    used = {m for _, expr in queries(dashboard()) for m in METRIC.findall(expr)} - PROMQL_WORDS
    assert used, "the dashboard names no metric"
    missing = {}
    for where, expr in queries(dashboard()):
        for m in METRIC.findall(expr):
            if m not in names:
                missing.setdefault(m, []).append(where)
    assert not missing, f"the dashboard queries metrics no binary exports: {missing}"


def test_histograms_are_histograms(exported):
    """histogram_quantile over _bucket needs a histogram family, not a summary."""
    for _, expr in queries(dashboard()):
        for name in re.findall(r"\b(ramify_[a-z0-9_]+)_bucket\b", expr):
            kinds = {fams[name] for fams in exported.values() if name in fams}
            assert kinds == {"histogram"}, f"{name}: {kinds or 'not exported'}"


def test_the_name_check_sees_a_name_no_binary_exports(exported):
    """The comparison is not vacuous: a renamed metric would be caught."""
    names = set().union(*(series_names(f) for f in exported.values()))
    assert "ramify_storage_create_duration_seconds_bucket" in names
    assert "ramify_storage_create_duration_bucket" not in names
    assert "ramify_operator_branches_by_phase" in names and "ramify_proxy_ready" in names


# --- the ConfigMap ----------------------------------------------------------------------------


def test_no_dashboard_by_default(rendered_default):
    assert not rendered_default.of_kind("ConfigMap")


def test_the_config_map_carries_the_dashboard_and_the_sidecars_label():
    values = {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "Ramify"}}}
    out = kube.render(RAMIFY_CHART, values, namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER)
    [cm] = out.of_kind("ConfigMap")
    kube.validate(cm)
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Ramify"}
    assert json.loads(cm["data"]["ramify.json"]) == dashboard()


def test_the_dashboard_can_go_to_grafanas_namespace_with_its_label():
    values = {"dashboard": {"enabled": True, "namespace": "monitoring", "label": "grafana_dashboard_ramify", "labelValue": "yes"}}
    out = kube.render(RAMIFY_CHART, values, namespace=NAMESPACE, cluster=kube.CURRENT_CLUSTER)
    [cm] = out.of_kind("ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    # Named after the release namespace, so two installs' dashboards cannot collide there.
    assert cm["metadata"]["name"] == f"ramify-{NAMESPACE}-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard_ramify"] == "yes"
