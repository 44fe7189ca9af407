"""examples/ and the YAML in the charts' README: every file parses, every object is valid
for its kind (Kubernetes' schemas, or the CRD's for DatabaseBranch, strictly), and the
examples agree with each other (forks are allowed by their parent's sharing, the Argo CD
source path exists, the preview namespaces carry the label the root shares with)."""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

import pytest
import yaml

import kube
from conftest import CHARTS, EXAMPLES, REPO
from pod_security import restricted_violations

PREVIEW_CHART = EXAMPLES / "preview-env"
WORKFLOW = EXAMPLES / "github-actions" / "branch-per-pr.yml"
APPLICATIONSET = EXAMPLES / "argocd-applicationset.yaml"


def manifest_files() -> list[Path]:
    """Every YAML file of examples/ except Helm templates (YAML only once rendered)."""
    return sorted(
        p for p in EXAMPLES.rglob("*")
        if p.suffix in (".yaml", ".yml") and "templates" not in p.relative_to(EXAMPLES).parts
    )


def objects(path: Path) -> list[dict]:
    return kube.parse_manifests(path.read_text())


def workflow_objects() -> list[dict]:
    """The manifests the workflow pipes into `kubectl apply -f - <<EOF`, with its env
    variables filled in for pull request 42."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    env = {k: v.replace("${{ github.event.pull_request.number }}", "42") for k, v in workflow["env"].items()}
    out = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for doc in re.findall(r"kubectl apply -f - <<EOF\n(.*?)\nEOF", step.get("run", ""), re.S):
                out += kube.parse_manifests(string.Template(doc).substitute(env))
    return out


def preview_values() -> dict:
    """The values the ApplicationSet gives examples/preview-env, for pull request 42."""
    appset = yaml.safe_load(APPLICATIONSET.read_text())
    text = yaml.safe_dump(appset["spec"]["template"]["spec"]["source"]["helm"]["valuesObject"])
    return yaml.safe_load(text.replace("{{ .number }}", "42").replace("{{ .head_sha }}", "3f2c1ab"))


def all_example_objects() -> list[dict]:
    # preview-env's own files are chart metadata and values; its objects come from rendering.
    found = [o for p in manifest_files()
             if p != WORKFLOW and PREVIEW_CHART not in p.parents for o in objects(p)]
    found += workflow_objects()
    found += kube.render(PREVIEW_CHART, preview_values(), namespace="pr-42", name="preview").objects
    return found


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs if d is not None), path


def test_kubernetes_objects_are_valid():
    checked = 0
    for obj in all_example_objects():
        if kube.has_schema(obj):
            kube.validate(obj)
            checked += 1
    assert checked >= 6


def test_database_branches_are_valid(crds):
    branches = [o for o in all_example_objects() if o["kind"] == "DatabaseBranch"]
    assert len(branches) == 4  # root, developer, preview (Argo CD), preview (Actions)
    for branch in branches:
        kube.validate_custom(branch, crds)


def test_checkpoint_and_restore_are_valid_and_name_their_branch(crds):
    everything = all_example_objects()
    found = [o for o in everything if o["kind"] in ("BranchCheckpoint", "BranchRestore")]
    assert sorted(o["kind"] for o in found) == ["BranchCheckpoint", "BranchRestore"]
    branches = {(o["metadata"]["namespace"], o["metadata"]["name"])
                for o in everything if o["kind"] == "DatabaseBranch"}
    checkpoints = {(o["metadata"]["namespace"], o["metadata"]["name"])
                   for o in found if o["kind"] == "BranchCheckpoint"}
    for obj in found:
        kube.validate_custom(obj, crds)
        ns = obj["metadata"]["namespace"]
        assert (ns, obj["spec"]["branch"]) in branches, obj["metadata"]["name"]
        if "checkpoint" in obj["spec"].get("source", {}):
            assert (ns, obj["spec"]["source"]["checkpoint"]) in checkpoints


def test_workloads_pass_the_restricted_profile():
    for obj in all_example_objects():
        for name, template in kube.pod_templates(obj):
            assert restricted_violations(template) == [], name


def selector_matches(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def test_every_fork_is_allowed_by_its_parent():
    """What the operator checks before forking across namespaces, done on the examples: a
    child elsewhere than its parent must be named by the parent's sharing or match its
    namespace selector, else it would sit at ParentNotShared."""
    everything = all_example_objects()
    branch_list = [o for o in everything if o["kind"] == "DatabaseBranch"]
    # Both pull-request examples make pr-42/db: the same child, checked twice.
    branches = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in branch_list}
    namespaces = {o["metadata"]["name"]: o for o in everything if o["kind"] == "Namespace"}
    forks = 0
    for branch in branch_list:
        ns, name = branch["metadata"]["namespace"], branch["metadata"]["name"]
        parent_ref = branch["spec"].get("parent")
        if not parent_ref:
            continue
        forks += 1
        parent_ns = parent_ref.get("namespace", ns)
        parent = branches.get((parent_ns, parent_ref["name"]))
        assert parent is not None, f"{ns}/{name}: parent {parent_ns}/{parent_ref['name']} is in no example"
        assert ns in namespaces, f"{ns}/{name}: no example creates namespace {ns}"
        if parent_ns == ns:
            continue
        sharing = parent["spec"].get("sharing") or {}
        labels = namespaces[ns]["metadata"].get("labels") or {}
        assert ns in (sharing.get("namespaces") or []) or (
            "namespaceSelector" in sharing and selector_matches(sharing["namespaceSelector"], labels)
        ), f"{ns}/{name} forks {parent_ns}/{parent_ref['name']}, which does not share with {ns}"
    assert forks == 3


def test_applicationset_deploys_the_preview_chart():
    appset = yaml.safe_load(APPLICATIONSET.read_text())
    assert appset["kind"] == "ApplicationSet"
    [generator] = appset["spec"]["generators"]
    assert "pullRequest" in generator
    template = appset["spec"]["template"]
    assert (REPO / template["spec"]["source"]["path"]) == PREVIEW_CHART
    assert "resources-finalizer.argocd.argoproj.io" in template["metadata"]["finalizers"]
    assert template["spec"]["destination"]["namespace"] == "pr-{{ .number }}"
    assert kube.lint(PREVIEW_CHART, preview_values(), namespace="pr-42") == []
    rendered = kube.render(PREVIEW_CHART, preview_values(), namespace="pr-42", name="preview")
    assert {(o["kind"], o["metadata"]["name"]) for o in rendered.objects} == {
        ("Namespace", "pr-42"), ("DatabaseBranch", "db"), ("Deployment", "app"), ("Service", "app"),
    }
    deployment = rendered.get("Deployment", "app")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":3f2c1ab")


def test_workflow_creates_waits_and_deletes():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as true.
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers["pull_request"]["types"]) == {"opened", "reopened", "synchronize", "closed"}
    jobs = workflow["jobs"]
    create, delete = jobs["create"], jobs["delete"]
    gated = "needs.gate.outputs.enabled == 'true'"
    assert create["if"] == f"{gated} && github.event.action != 'closed'"
    assert delete["if"] == f"{gated} && github.event.action == 'closed'"
    create_runs = "\n".join(s.get("run", "") for s in create["steps"])
    delete_runs = "\n".join(s.get("run", "") for s in delete["steps"])
    assert 'wait databasebranch/db --for=condition=Ready' in create_runs
    assert "delete databasebranch/db" in delete_runs
    kinds = [o["kind"] for o in workflow_objects()]
    assert kinds == ["Namespace", "DatabaseBranch"]
    # The safety net should the close event be missed.
    [branch] = [o for o in workflow_objects() if o["kind"] == "DatabaseBranch"]
    assert branch["spec"]["ttl"] == "168h"


def test_workflow_skips_forks_and_dependabot_with_a_notice():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    gate = jobs["gate"]
    assert "if" not in gate, "the gate always runs, so a skipped pull request is told why"
    [check] = [s for s in gate["steps"] if s.get("id") == "check"]
    assert check["env"]["HEAD_REPO"] == "${{ github.event.pull_request.head.repo.full_name }}"
    assert '"$ACTOR" = "dependabot[bot]"' in check["run"]
    assert "::notice title=No database branch::" in check["run"]
    for name, job in jobs.items():
        if name != "gate":
            assert "gate" in ([job["needs"]] if isinstance(job["needs"], str) else job["needs"]), name
            assert job["if"].startswith("needs.gate.outputs.enabled == 'true'"), name


def test_workflow_pins_actions_by_commit_and_bounds_every_job():
    text = WORKFLOW.read_text()
    uses = re.findall(r"uses: (\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        name, _, ref = action.partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{name} is pinned to {ref!r}, not a commit"
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), f"{action} has no '# vX.Y.Z' tag comment"
    for name, job in yaml.safe_load(text)["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 30, name


def test_workflow_comments_the_diff_once_and_updates_it():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["schema-diff"]
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "args=(diff db --kube -n \"$NAMESPACE\" --exit-code)" in runs
    assert 'args+=(--data)' in runs
    marker = workflow["env"]["COMMENT_MARKER"]
    assert marker.startswith("<!--") and marker.endswith("-->")
    # Its own earlier comment is found by the marker and edited, else one is posted.
    assert 'startswith(\\"$COMMENT_MARKER\\")' in runs
    assert "--method PATCH" in runs and "--method POST" in runs
    assert runs.index('echo "$COMMENT_MARKER"') < runs.index("--method PATCH")


def test_readme_yaml_blocks_are_valid():
    """The manifests charts/README.md tells people to apply."""
    readme = (CHARTS / "README.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M)
    docs = [doc for block in blocks for doc in kube.parse_manifests(block)]
    assert {d["kind"] for d in docs} == {"StorageClass", "Application", "ConfigMap"}
    for doc in docs:
        if kube.has_schema(doc):
            kube.validate(doc)
    apps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Application"}
    assert "ServerSideApply=true" in apps["ramify-crds"]["spec"]["syncPolicy"]["syncOptions"]
    for app in apps.values():
        assert (REPO / app["spec"]["source"]["path"]).is_dir()
