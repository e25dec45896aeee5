"""The kind workflow cannot run here; what can be checked offline is checked.

tests/test_workflows.py validates every workflow against GitHub's schema (and actionlint
where installed); this module holds .github/workflows/kind.yml to the hardening rules
(actions pinned to commits, read-only token, no persisted credentials, a timeout) and
audits it with zizmor, offline, at its strictest persona.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.utils import k8s

WORKFLOW = k8s.REPO_ROOT / ".github" / "workflows" / "kind.yml"
PINNED = re.compile(
    r"^\s*(?:- )?uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+(?:\.\d+)*$", re.MULTILINE
)


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_actions_are_pinned_to_commits_with_their_tag(workflow):
    uses = [s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses), uses
    assert len(PINNED.findall(WORKFLOW.read_text())) == len(uses)  # each with "# vX.Y.Z"


def test_token_is_read_only_and_credentials_not_persisted(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 60, name
        assert "permissions" not in job, name
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name


def test_workflow_runs_the_smoke_test_on_the_fleet_overlay(workflow):
    (job,) = workflow["jobs"].values()
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "kind load docker-image" in runs
    assert 'scripts/k8s/smoke.sh "$IMAGE"' in runs
    smoke = (k8s.REPO_ROOT / "scripts" / "k8s" / "smoke.sh").read_text()
    assert "- ../fleet" in smoke
    # The CRDs it installs are the release whose schemas the tests validate against.
    readme = (Path(__file__).with_name("crd-schemas") / "README.md").read_text()
    commit = re.search(r"commit `([0-9a-f]{40})`", readme).group(1)
    assert commit in job["env"]["CRDS"]


def test_smoke_script_parses():
    proc = subprocess.run(
        ["bash", "-n", str(k8s.REPO_ROOT / "scripts" / "k8s" / "smoke.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _zizmor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("zizmor")), "--offline", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_zizmor_finds_nothing_at_its_strictest():
    proc = _zizmor("--persona=pedantic", str(WORKFLOW))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr


def test_zizmor_reports_an_unpinned_action(tmp_path):
    # Guards against an audit that passes everything.
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text().replace(
            "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1", "actions/checkout@v7"
        )
    )
    proc = _zizmor("--persona=pedantic", str(broken))
    assert proc.returncode != 0
    assert "unpinned-uses" in proc.stdout + proc.stderr
