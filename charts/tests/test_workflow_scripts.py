"""The scripts of examples/github-actions/branch-per-pr.yml, run as GitHub runs them (bash
-eo pipefail) against stand-ins for the network:
* the pull-request comment, with a `gh` that keeps the pull request's comments in a file
  and answers `--jq` with the real jq: one comment is posted on the first push and that
  same one edited on every later push, never a second; other people's comments are left
  alone, even one quoting the marker;
* the ramify CLI's install, with a `curl` serving what plugins/package.sh makes for a
  release: installed when the archive's sha256 is the release manifest's, refused if not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES

WORKFLOW = EXAMPLES / "github-actions" / "branch-per-pr.yml"
BOT = "github-actions[bot]"

# `gh api` as the step calls it, over a JSON list of {id, user: {login}, body}.
FAKE_GH = r'''
import json, subprocess, sys
state_path, args = sys.argv[1], sys.argv[2:]
assert args[0] == "api", args
args = args[1:]
method, jq, fields, path = "GET", None, {}, None
while args:
    a = args.pop(0)
    if a == "--method": method = args.pop(0)
    elif a == "--paginate": pass
    elif a == "--jq": jq = args.pop(0)
    elif a == "-F":
        k, v = args.pop(0).split("=", 1)
        fields[k] = open(v[1:]).read() if v.startswith("@") else v
    else: path = a
comments = json.load(open(state_path))
log = open(state_path + ".log", "a")
log.write(f"{method} {path}\n")
if method == "GET":
    assert path == "repos/acme/app/issues/42/comments", path
    out = subprocess.run(["jq", "-r", jq], input=json.dumps(comments), capture_output=True, text=True, check=True)
    sys.stdout.write(out.stdout)
elif method == "POST":
    assert path == "repos/acme/app/issues/42/comments", path
    comments.append({"id": 1000 + len(comments), "user": {"login": "github-actions[bot]"}, "body": fields["body"]})
elif method == "PATCH":
    cid = int(path.rsplit("/", 1)[1])
    assert path == f"repos/acme/app/issues/comments/{cid}", path
    [c] = [c for c in comments if c["id"] == cid]
    c["body"] = fields["body"]
json.dump(comments, open(state_path, "w"))
'''


def comment_step() -> tuple[dict, dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    [step] = [s for s in workflow["jobs"]["schema-diff"]["steps"]
              if s.get("name") == "Post or update the pull-request comment"]
    env = {k: v.replace("${{ github.event.pull_request.number }}", "42") for k, v in workflow["env"].items()}
    return step, env


@pytest.fixture()
def github(tmp_path):
    if not shutil.which("jq"):
        pytest.skip("jq is missing (apt-get install jq); gh's --jq is jq's language")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "comments.json"
    state.write_text(json.dumps([
        {"id": 7, "user": {"login": "alice"}, "body": "<!-- ramify-schema-diff --> quoted by a person"},
    ]))
    gh = bin_dir / "gh"
    gh.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'fake_gh.py'} {state} \"$@\"\n")
    gh.chmod(0o755)
    (tmp_path / "fake_gh.py").write_text(FAKE_GH)
    return tmp_path, bin_dir, state


def push(tmp_path: Path, bin_dir: Path, diff: str, differs: bool) -> None:
    step, env = comment_step()
    runner_temp = tmp_path / "runner"
    runner_temp.mkdir(exist_ok=True)
    (runner_temp / "diff.txt").write_text(diff)
    step_env = {k: v for k, v in step["env"].items() if not v.startswith("${{")}
    subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        check=True, capture_output=True, text=True,
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            **env, **step_env,
            "RUNNER_TEMP": str(runner_temp), "GITHUB_REPOSITORY": "acme/app", "PR_NUMBER": "42",
            "HEAD_SHA": "3f2c1ab", "DIFFERS": "true" if differs else "false", "GH_TOKEN": "t",
        },
    )


def test_one_comment_posted_then_edited(github):
    tmp_path, bin_dir, state = github
    push(tmp_path, bin_dir, "+CREATE TABLE public.orders (id bigint NOT NULL);\n", differs=True)
    push(tmp_path, bin_dir, "", differs=False)
    push(tmp_path, bin_dir, "+ALTER TABLE public.users ADD COLUMN email text;\n", differs=True)
    comments = json.loads(state.read_text())
    ours = [c for c in comments if c["user"]["login"] == BOT]
    assert len(ours) == 1, comments
    [theirs] = [c for c in comments if c["user"]["login"] == "alice"]
    assert theirs["body"] == "<!-- ramify-schema-diff --> quoted by a person"
    body = ours[0]["body"]
    assert body.startswith("<!-- ramify-schema-diff -->\n")
    assert "### Database changes of `pr-42/db` against `staging/main`" in body
    assert "```diff\n+ALTER TABLE public.users ADD COLUMN email text;\n```" in body
    assert "orders" not in body
    calls = (tmp_path / "comments.json.log").read_text().split()
    assert calls.count("POST") == 1 and calls.count("PATCH") == 2


def test_identical_says_so(github):
    tmp_path, bin_dir, state = github
    push(tmp_path, bin_dir, "", differs=False)
    [ours] = [c for c in json.loads(state.read_text()) if c["user"]["login"] == BOT]
    assert "No differences." in ours["body"] and "```" not in ours["body"]


def test_a_huge_diff_is_cut_to_fit_a_comment(github):
    tmp_path, bin_dir, state = github
    push(tmp_path, bin_dir, "+-- filler line of a big schema change\n" * 5000, differs=True)
    [ours] = [c for c in json.loads(state.read_text()) if c["user"]["login"] == BOT]
    assert len(ours["body"]) < 65536
    assert "Cut at 60,000 bytes" in ours["body"]
    # The fence closes on a line of its own, though the cut fell inside a line.
    assert ours["body"].count("\n```\n") == 1


# `curl -fsSL --proto =https -o FILE URL`, answered from a directory of release assets.
FAKE_CURL = r'''#!/bin/sh
out=""; url=""
while [ $# -gt 0 ]; do
  case $1 in -o) out=$2; shift ;; --proto) shift ;; -*) ;; *) url=$1 ;; esac
  shift
done
echo "$url" >> "$RELEASE_DIR/requests"
cp "$RELEASE_DIR/$(basename "$url")" "$out"
'''


def install_step(job: str) -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    [step] = [s for s in workflow["jobs"][job]["steps"] if s.get("name") == "Install the ramify CLI"]
    return step


def run_install(tmp_path: Path, release: Path) -> subprocess.CompletedProcess:
    _, env = comment_step()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    home, runner_temp = tmp_path / "home", tmp_path / "runner"
    home.mkdir(exist_ok=True)
    runner_temp.mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", install_step("schema-diff")["run"]],
        capture_output=True, text=True,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env, "HOME": str(home),
             "RUNNER_TEMP": str(runner_temp), "GITHUB_PATH": str(tmp_path / "github_path"),
             "RELEASE_DIR": str(release)},
    )


def test_the_cli_is_installed_from_the_release_checked_against_its_manifest(tmp_path):
    from test_krew_manifest import package, workspace_version

    out, _ = package(tmp_path / "build")
    _, env = comment_step()
    assert env["RAMIFY_VERSION"] == workspace_version()
    assert install_step("create")["run"] == install_step("schema-diff")["run"]
    run = run_install(tmp_path, out)
    assert run.returncode == 0, run.stdout + run.stderr
    installed = tmp_path / "home" / ".local" / "bin" / "ramify"
    assert installed.read_bytes() == b"#!/bin/sh\necho ramify\n"
    assert (tmp_path / "github_path").read_text() == f"{installed.parent}\n"
    base = f"https://github.com/ramify/ramify/releases/download/v{workspace_version()}"
    assert (out / "requests").read_text().split() == [f"{base}/ramify.yaml", f"{base}/ramify-linux-amd64.tar.gz"]


def test_an_archive_other_than_the_manifest_says_is_not_installed(tmp_path):
    from test_krew_manifest import package

    out, _ = package(tmp_path / "build")
    other, _ = package(tmp_path / "other", {})
    (other / "ramify-linux-amd64.tar.gz").write_bytes(b"not the release's archive")
    (other / "ramify.yaml").write_text((out / "ramify.yaml").read_text())
    run = run_install(tmp_path, other)
    assert run.returncode != 0
    assert "FAILED" in run.stdout + run.stderr
    assert not (tmp_path / "home" / ".local" / "bin" / "ramify").exists()
