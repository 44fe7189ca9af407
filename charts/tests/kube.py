"""What the chart tests know about Kubernetes: rendering a chart with the Helm SDK,
validating objects against the API server's OpenAPI schemas or a CRD's schema, and finding
the Pod templates in workloads."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

# The Kubernetes version the objects are validated for: the newest whose schemas
# kubernetes-validate ships (it falls back to the nearest older one it has).
KUBE_VERSION = "1.37.0"

# The CRDs crdgen must write, at least; every *.ramify.dev.yaml it writes is loaded.
CRD_FILES = ("databasebranches.ramify.dev.yaml", "timelines.ramify.dev.yaml")

# The kind whose presence turns on the chart's admission policy. Helm's Capabilities list
# every kind a cluster serves as group/version/Kind (besides group/version), but its
# defaults without a cluster (`helm template`) hold group/versions only.
VALIDATING_ADMISSION_POLICY = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"


@dataclass(frozen=True)
class Cluster:
    """The Capabilities a chart is rendered with: what `helm install` learns from a
    cluster's discovery, or `helm template --kube-version --api-versions` is told."""

    kube_version: str
    # Added to Helm's default group/versions.
    api_versions: tuple[str, ...] = ()


# A cluster of KUBE_VERSION, where ValidatingAdmissionPolicy is GA (1.30 and later).
CURRENT_CLUSTER = Cluster(
    f"v{KUBE_VERSION}",
    (VALIDATING_ADMISSION_POLICY, VALIDATING_ADMISSION_POLICY + "Binding"),
)
# The oldest cluster the chart installs on (its Chart.yaml kubeVersion): 1.29 serves
# admissionregistration.k8s.io/v1, but ValidatingAdmissionPolicy only as v1beta1 (off by default).
OLDEST_CLUSTER = Cluster("v1.29.0")


@dataclass
class Rendered:
    """One rendering of a chart: its objects (with the template each came from) and NOTES."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: str = ""
    # The chart's defaults coalesced with the values given, as the templates saw them.
    values: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(
    chart: Path,
    values: dict[str, Any],
    *,
    namespace: str,
    name: str = "ramify",
    cluster: Cluster | None = None,
) -> Rendered:
    """Renders `chart` the way `helm install` would (values checked against the chart's
    values.schema.json first), into `cluster`, or with the Helm SDK's default Capabilities
    (those of `helm template`) when it is None."""
    out = Rendered()
    with helm.Chart.load(str(chart)) as loaded:
        loaded.validate_schema(values)
        out.values = loaded.merge_values(values)
        if cluster is None:
            manifests = loaded.render(values, name=name, namespace=namespace, is_install=True)
        else:
            manifests = render_into(loaded, values, name=name, namespace=namespace, cluster=cluster)
    for source, text in sorted(manifests.items()):
        if source.endswith("NOTES.txt"):
            out.notes = text
            continue
        for obj in parse_manifests(text):
            out.objects.append(obj)
            out.sources.append(source)
    return out


def render_into(
    loaded: helm.Chart, values: dict[str, Any], *, name: str, namespace: str, cluster: Cluster
) -> dict[str, str]:
    """Chart.render with Capabilities. helm-c-sdk's helm_render takes `kube_version` and
    `api_versions` options (as `helm template --kube-version --api-versions`), which
    helm-python-sdk's Chart.render does not pass on, so this calls it directly; the native
    library refuses an option it does not know, so an SDK without them fails loudly here."""
    from helm_python import _native

    opts = {
        "name": name,
        "namespace": namespace,
        "is_install": True,
        "kube_version": cluster.kube_version,
        "api_versions": list(cluster.api_versions),
    }
    rendered = _native.call_string("helm_render", loaded._raw(), json.dumps(values), json.dumps(opts))
    return json.loads(rendered)


def lint(chart: Path, values: dict[str, Any], *, namespace: str) -> list[str]:
    """`helm lint --strict` findings of warning level or worse, as readable lines."""
    report = helm.lint(
        str(chart), values, strict=True, namespace=namespace, kube_version=f"v{KUBE_VERSION}"
    )
    findings = [
        f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2
    ]
    return findings + list(report.get("errors") or [])


def validate(obj: dict[str, Any]) -> None:
    """Raises unless `obj` is a valid object of its kind for Kubernetes KUBE_VERSION, in
    strict mode: a field the API does not know (a typo, a wrong indentation) is an error,
    where the API server would silently drop it."""
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(
            f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {e.message}"
        ) from None


def has_schema(obj: dict[str, Any]) -> bool:
    """Whether Kubernetes itself defines obj's kind (rather than a CRD)."""
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        return True
    return True


# --- Pod templates ---------------------------------------------------------------------

POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(description, {metadata, spec}) of every Pod obj makes, if any."""
    kind = obj["kind"]
    name = f"{kind}/{obj['metadata']['name']}"
    if kind == "Pod":
        yield name, obj
        return
    path = POD_TEMPLATE_PATHS.get(kind)
    if path is None:
        return
    template = obj
    for key in path:
        template = template[key]
    yield name, template


# --- CRDs ------------------------------------------------------------------------------


def load_crds(repo: Path) -> dict[str, dict[str, Any]]:
    """The CRDs crdgen writes, keyed by name. Both copies (crds/ for kubectl users, the
    ramify-crds chart for Helm and Argo CD users) of each must exist and be identical."""
    generated = repo / "crds"
    in_chart = repo / "charts" / "ramify-crds" / "templates"
    command = "cargo run -p ramify-crd --bin crdgen"
    if not generated.is_dir() and not any((in_chart / f).exists() for f in CRD_FILES):
        pytest.skip(f"the CRDs were never generated (no crds/): run `{command}`")
    crds = {}
    written = {p.name for folder in (generated, in_chart) for p in folder.glob("*.ramify.dev.yaml")}
    for file in sorted(written | set(CRD_FILES)):
        source, copy_ = generated / file, in_chart / file
        assert source.exists(), f"{source.relative_to(repo)} is missing: run `{command}`"
        assert copy_.exists(), f"{copy_.relative_to(repo)} is missing: run `{command}`"
        assert source.read_text() == copy_.read_text(), (
            f"{copy_.relative_to(repo)} differs from {source.relative_to(repo)}: run `{command}`"
        )
        docs = parse_manifests(source.read_text())
        assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition", file
        crds[docs[0]["metadata"]["name"]] = docs[0]
    return crds


def crd_for(crds: dict[str, dict[str, Any]], obj: dict[str, Any]) -> dict[str, Any] | None:
    group, _, version = obj["apiVersion"].rpartition("/")
    for crd in crds.values():
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == obj["kind"]:
            return crd
    return None


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as JSON Schema, with unknown fields made errors wherever
    the API server would prune them: what `kubectl apply --validate=strict` reports."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            if node.get("nullable"):
                # OpenAPI's nullable is JSON Schema's "or null".
                if isinstance(node.get("type"), str):
                    node["type"] = [node["type"], "null"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # apiVersion, kind and metadata are validated by the API server's own rules, whatever
    # the CRD's schema says of them.
    root = schema.setdefault("properties", {})
    root["apiVersion"] = {"type": "string"}
    root["kind"] = {"type": "string"}
    root["metadata"] = {"type": "object"}
    return schema


def validate_custom(obj: dict[str, Any], crds: dict[str, dict[str, Any]]) -> None:
    """Raises unless obj is valid for the served version of its CRD (strictly)."""
    crd = crd_for(crds, obj)
    assert crd is not None, f"no CRD defines {obj['apiVersion']} {obj['kind']}"
    version = obj["apiVersion"].rpartition("/")[2]
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    assert served, f"{crd['metadata']['name']} serves no version {version}"
    schema = strict_schema(served[0]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}:\n  " + "\n  ".join(lines))
