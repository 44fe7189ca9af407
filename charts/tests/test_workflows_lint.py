"""Every GitHub Actions workflow in examples/ passes actionlint (built from its Go module
by scripts/build-tools.sh) with shellcheck checking each `run:` script — what a user
copying one into .github/workflows/ would be told by the linters GitHub users run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES
from tools import system, tool


def workflows() -> list[Path]:
    """The YAML files of examples/ that are workflows: top-level `on` (YAML 1.1 reads it
    as true) and `jobs`."""
    found = []
    for path in sorted(EXAMPLES.rglob("*")):
        if path.suffix not in (".yml", ".yaml") or "templates" in path.parts:
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        if any("jobs" in d and ("on" in d or True in d) for d in docs):
            found.append(path)
    return found


def actionlint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tool("actionlint")), f"-shellcheck={system('shellcheck')}", "-no-color", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_the_examples_have_workflows():
    assert EXAMPLES / "github-actions" / "branch-per-pr.yml" in workflows()


@pytest.mark.parametrize("path", workflows(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_actionlint_and_shellcheck_pass(path):
    run = actionlint(path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_actionlint_runs_shellcheck_on_run_scripts(tmp_path):
    """The check above can fail: a script shellcheck objects to is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    timeout-minutes: 5\n"
        "    steps:\n      - run: for f in $(ls *.txt); do cat \"$f\"; done\n"
    )
    run = actionlint(bad)
    assert run.returncode == 1
    assert "SC2045" in run.stdout, run.stdout
