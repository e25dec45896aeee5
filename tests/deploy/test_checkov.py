"""checkov's Kubernetes policies pass on every rendered overlay, with no unexplained skip.

checkov pins many packages of its own, so it lives in its own venv, ``.venv-checkov/`` at
the repository root (ignored by git), created here on first use from the pinned
``checkov.lock`` (about a minute) and reused while that file is unchanged. Skipped checks
are listed in ``deploy/k8s/checkov.yaml``, each with its reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.utils import k8s
from tests.utils.containers import unavailable

LOCK = Path(__file__).with_name("checkov.lock")
VENV = k8s.REPO_ROOT / ".venv-checkov"
CONFIG = k8s.K8S_DIR / "checkov.yaml"

INSECURE_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: insecure
  namespace: iris
spec:
  containers:
    - name: app
      image: example/app:latest
      securityContext:
        privileged: true
"""


def _ensure_venv() -> Path:
    """checkov's venv, (re)built when ``checkov.lock`` changed; returns the checkov binary."""
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{digest}"
    binary = VENV / "bin" / "checkov"
    with open(k8s.REPO_ROOT / ".venv-checkov.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (pytest-xdist workers)
        if stamp.exists() and binary.exists():
            return binary
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True, timeout=300)
        subprocess.run([*pip, "-r", str(LOCK)], check=True, timeout=1200)
        stamp.touch()
    return binary


@pytest.fixture(scope="module")
def checkov() -> Path:
    try:
        return _ensure_venv()
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable(f"cannot install checkov from {LOCK.name}: {exc}", what="checkov")
        raise  # unreachable: unavailable() always raises


def _scan(checkov: Path, manifest: Path) -> dict:
    proc = subprocess.run(
        [str(checkov), "--config-file", str(CONFIG), "-f", str(manifest), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: some check failed
    report = json.loads(proc.stdout)
    assert isinstance(report, dict) and report.get("check_type") == "kubernetes", proc.stdout[:500]
    return report


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_checkov_passes_on_the_rendered_overlay(checkov, overlay, tmp_path):
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(k8s.render_text(overlay))
    report = _scan(checkov, manifest)
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    # Every workload was looked at (a scan that parsed nothing would also have no failures).
    scanned = {c["resource"].split(".")[0] for c in report["results"]["passed_checks"]}
    assert {"Deployment", "Service", "ServiceAccount"} <= scanned
    assert report["summary"]["passed"] > 50


def test_checkov_reports_an_insecure_pod(checkov, tmp_path):
    # Guards against a scanner (or a config) that lets everything through.
    manifest = tmp_path / "insecure.yaml"
    manifest.write_text(INSECURE_POD)
    failed = {c["check_id"] for c in _scan(checkov, manifest)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22"} <= failed  # privileged, escalation, rw root


def test_every_skipped_check_says_why():
    text = CONFIG.read_text()
    skipped = yaml.safe_load(text)["skip-check"]
    assert skipped, "no skipped checks: drop the list"
    for check in skipped:
        # The comment block right above the entry names the check and gives a reason.
        match = re.search(rf"((?:^  # .*\n)+)^  - {re.escape(check)}$", text, re.MULTILINE)
        assert match, f"{check} is skipped without a comment above it"
        assert check in match.group(1) and len(match.group(1)) > 80, match.group(1)
