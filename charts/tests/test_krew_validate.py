"""The krew package passes the validation krew-index runs on every plugin: krew 0.4.3's
validate-krew-manifest (built from its Go module) checks the manifest's structure and
platforms, then installs it with `kubectl krew install` into a scratch KREW_ROOT —
downloading the archive from the manifest's uri, which this test serves on loopback —
and requires a LICENSE among the installed files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_krew_manifest import package, workspace_version
from tools import system, tool


class _Archives(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def release_server(tmp_path):
    """An HTTP server on 127.0.0.1 publishing tmp_path/release/ like a GitHub release."""
    root = tmp_path / "release"
    root.mkdir()
    handler = type("Handler", (_Archives,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


def validate(manifest: Path, krew_root: Path) -> subprocess.CompletedProcess:
    validator = tool("validate-krew-manifest")
    kubectl = system("kubectl")
    tool("kubectl-krew")
    # `kubectl krew` is kubectl running kubectl-krew from PATH; the validator passes on
    # only PATH and its KREW_* variables, so HOME and proxies play no part.
    path = os.pathsep.join([str(validator.parent), str(kubectl.parent), os.environ["PATH"]])
    return subprocess.run(
        [str(validator), "-manifest", str(manifest)],
        capture_output=True, text=True, timeout=300,
        env={"PATH": path, "HOME": str(krew_root), "TMPDIR": str(krew_root)},
    )


def publish(tmp_path: Path, root: Path, base: str) -> tuple[Path, dict]:
    """package.sh's archive under root/v<version>/ and its manifest, whose uri points there."""
    version = workspace_version()
    url = f"{base}/v{version}/ramify-linux-amd64.tar.gz"
    out, manifest = package(tmp_path / "build", {"RAMIFY_RELEASE_URL": url})
    (root / f"v{version}").mkdir()
    (out / "ramify-linux-amd64.tar.gz").rename(root / f"v{version}" / "ramify-linux-amd64.tar.gz")
    return out / "ramify.yaml", manifest


def test_krew_index_validation_with_install_passes(tmp_path, release_server):
    root, base, requests = release_server
    manifest_path, manifest = publish(tmp_path, root, base)
    scratch = tmp_path / "validate"
    scratch.mkdir()
    run = validate(manifest_path, scratch)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 1 spec.platforms installed fine" in run.stdout + run.stderr
    # The install downloaded the archive from the manifest's uri, not from anywhere else.
    assert requests == [f"/v{workspace_version()}/ramify-linux-amd64.tar.gz"]
    assert manifest["spec"]["homepage"].startswith("https://")


def test_an_archive_without_a_license_is_refused(tmp_path, release_server):
    """What krew-index said of the package before the LICENSE was in the archive."""
    root, base, _ = release_server
    manifest_path, manifest = publish(tmp_path, root, base)
    [archive] = root.rglob("*.tar.gz")
    stage = tmp_path / "unlicensed"
    with tarfile.open(archive) as tar:
        tar.extractall(stage, filter="data")
    (stage / "LICENSE").unlink()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(stage / "ramify", arcname="ramify")
    platform = manifest["spec"]["platforms"][0]
    platform["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    platform["files"] = [f for f in platform["files"] if f["from"] != "LICENSE"]
    manifest_path.write_text(yaml.safe_dump(manifest))
    scratch = tmp_path / "validate"
    scratch.mkdir()
    run = validate(manifest_path, scratch)
    assert run.returncode != 0
    assert "LICENSE (or alike) file is not extracted from the archive" in run.stdout + run.stderr


def test_the_license_is_apache_2_as_cargo_declares():
    text = (REPO / "LICENSE").read_text()
    assert 'license = "Apache-2.0"' in (REPO / "Cargo.toml").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text
