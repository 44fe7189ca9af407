"""plugins/package.sh: the krew archive holds the `ramify` binary and the LICENSE, and the
manifest it writes from plugins/ramify.yaml.in is a krew Plugin whose sha256 is the
archive's and whose uri is the release's (HTTPS)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = REPO / "plugins" / "package.sh"


def package(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[Path, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    binary = tmp_path / "ramify-build"
    binary.write_bytes(b"#!/bin/sh\necho ramify\n")
    binary.chmod(0o755)
    out = tmp_path / "krew"
    subprocess.run(
        ["bash", str(PACKAGE), str(binary), str(out)],
        check=True, capture_output=True, env={**os.environ, **(env or {})},
    )
    return out, yaml.safe_load((out / "ramify.yaml").read_text())


def workspace_version() -> str:
    for line in (REPO / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


def test_manifest_matches_the_archive(tmp_path):
    out, manifest = package(tmp_path)
    archive = out / "ramify-linux-amd64.tar.gz"
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin"
    assert manifest["metadata"]["name"] == "ramify"
    assert manifest["spec"]["version"] == "v" + workspace_version()
    assert manifest["spec"]["shortDescription"]
    [platform] = manifest["spec"]["platforms"]
    assert platform["selector"]["matchLabels"] == {"os": "linux", "arch": "amd64"}
    assert platform["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    # Where a release publishes the archive, so the manifest installs without --archive.
    assert platform["uri"] == (
        f"https://github.com/ramify/ramify/releases/download/v{workspace_version()}/ramify-linux-amd64.tar.gz"
    )
    assert manifest["spec"]["homepage"] == "https://github.com/ramify/ramify"
    assert platform["bin"] == "ramify"
    assert platform["files"] == [{"from": "ramify", "to": "."}, {"from": "LICENSE", "to": "."}]
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["LICENSE", "ramify"]
        assert members["ramify"].mode == 0o755 and members["LICENSE"].mode == 0o644
        assert tar.extractfile(members["ramify"]).read() == b"#!/bin/sh\necho ramify\n"
        assert tar.extractfile(members["LICENSE"]).read() == (REPO / "LICENSE").read_bytes()


def test_release_url_and_reproducible_archive(tmp_path):
    url = "https://example.invalid/v1/ramify-linux-amd64.tar.gz"
    out1, first = package(tmp_path / "a", {"RAMIFY_RELEASE_URL": url})
    out2, second = package(tmp_path / "b")
    assert first["spec"]["platforms"][0]["uri"] == url
    # Same binary, same archive bytes: the published sha256 can be checked by rebuilding.
    assert first["spec"]["platforms"][0]["sha256"] == second["spec"]["platforms"][0]["sha256"]


def test_a_missing_binary_is_one_clear_error(tmp_path):
    run = subprocess.run(
        ["bash", str(PACKAGE), str(tmp_path / "nope"), str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert run.returncode == 2
    assert "is not an executable; build it first" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url", ["http://example.com/ramify.tar.gz", "ftp://127.0.0.1/x", "file:///tmp/x"])
def test_a_release_url_krew_users_cannot_trust_is_refused(tmp_path, url):
    binary = tmp_path / "ramify"
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o755)
    run = subprocess.run(
        ["bash", str(PACKAGE), str(binary), str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "RAMIFY_RELEASE_URL": url},
    )
    assert run.returncode == 2
    assert f"RAMIFY_RELEASE_URL={url} is neither https:// nor http:// on loopback" in run.stderr
