"""The Argo CD health check of DatabaseBranch, run the way Argo CD runs it: Lua 5.1 (the
dialect of gopher-lua) with only the libraries Argo CD opens, on each case of
health_test.yaml (Argo CD's own convention for resource customizations)."""

from __future__ import annotations

import re
from pathlib import Path

import lupa.lua51 as lua51
import pytest
import yaml

import kube
from conftest import CHARTS, RAMIFY_CHART

ARGOCD = RAMIFY_CHART / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


def health(obj: dict) -> dict:
    """What Argo CD would show for `obj`: the script's {status, message}."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD's VM opens base, table, string and math only (no io, os, require...): the
    # script runs in an environment holding just those, so reaching for more fails here
    # as it would there.
    run = runtime.eval(
        """
        function(source, obj)
          local env = {obj = obj, table = table, string = string, math = math}
          for _, name in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall",
                                 "select", "tonumber", "tostring", "type", "unpack"}) do
            env[name] = _G[name]
          end
          local chunk, err = loadstring(source, "health.lua")
          if chunk == nil then error(err) end
          setfenv(chunk, env)
          return chunk()
        end
        """
    )
    result = run(SCRIPT, runtime.table_from(obj, recursive=True))
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health(case):
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_every_input_is_a_case():
    used = {Path(c["inputPath"]).name for c in CASES}
    present = {p.name for p in (ARGOCD / "testdata").glob("*.yaml")}
    assert used == present


def test_every_status_argo_cd_knows_is_covered():
    """Healthy, Progressing and Degraded all occur; Suspended and Missing are Argo CD's
    words for other things (a paused rollout, an absent object) and must not."""
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}


def test_inputs_are_real_database_branches(crds):
    """The inputs follow the CRD's status schema, so the script reads the fields the
    operator really writes."""
    for case in CASES:
        kube.validate_custom(yaml.safe_load((ARGOCD / case["inputPath"]).read_text()), crds)


def test_the_documented_argocd_cm_snippet_is_the_script():
    """charts/README.md shows the argocd-cm entry; it must be health.lua, verbatim."""
    readme = (CHARTS / "README.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M)
    [block] = [b for b in blocks if "resource.customizations.health.ramify.dev_DatabaseBranch" in b]
    doc = yaml.safe_load(block)
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm"
    assert doc["data"]["resource.customizations.health.ramify.dev_DatabaseBranch"] == SCRIPT
