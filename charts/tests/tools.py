"""Where the chart tests find the third-party checkers that scripts/build-tools.sh builds
from their Go modules (krew's validator, actionlint) and the binaries they call (kubectl,
shellcheck). `make test` builds them first and sets RAMIFY_REQUIRE_TOOLS=1, so there a
missing one fails; a bare `make chart-test` without them skips, naming the command."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TOOLS_BIN = Path(os.environ.get("RAMIFY_TOOLS", "/var/tmp/ramify-tools")) / "bin"
K8S_BIN = Path(os.environ.get("RAMIFY_K8S_BIN", "/var/tmp/ramify-k8s/bin"))


def _missing(what: str) -> None:
    message = f"{what}; build the checkers with scripts/build-tools.sh (make tools)"
    if os.environ.get("RAMIFY_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> Path:
    """A binary scripts/build-tools.sh builds, or skip/fail naming how to build it."""
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        _missing(f"{path} is missing")
    return path


def system(name: str) -> Path:
    """A binary found on PATH or among the test cluster's (kubectl), or skip/fail."""
    found = shutil.which(name) or shutil.which(name, path=str(K8S_BIN))
    if not found:
        _missing(f"{name} is neither on PATH nor in {K8S_BIN} (make k8s-binaries builds kubectl as root)")
    return Path(found)
