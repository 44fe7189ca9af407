"""Proxy high availability: two replicas by default, each naming itself (its Pod name) to
the operator, which decides idleness across proxies (docs/architecture.md)."""

from __future__ import annotations

from conftest import NAMESPACE, RAMIFY_CHART

import kube


def test_two_proxies_by_default_each_named_by_its_pod(rendered_default):
    deployment = rendered_default.get("Deployment", "ramify-proxy")
    assert deployment["spec"]["replicas"] == 2
    (c,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy"
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["RAMIFY_PROXY_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_one_proxy_still_allowed():
    r = kube.render(RAMIFY_CHART, {"proxy": {"replicas": 1}}, namespace=NAMESPACE)
    assert r.get("Deployment", "ramify-proxy")["spec"]["replicas"] == 1
