"""monitoring/alerts.yml is the one source of alerts: the PrometheusRule is generated from it.

These tests compare against whatever alerts.yml holds now; after a change to the alerts,
``python scripts/k8s/prometheusrule.py`` brings the PrometheusRule back in line.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import pytest
import yaml

from tests.utils import k8s

SCRIPT = k8s.REPO_ROOT / "scripts" / "k8s" / "prometheusrule.py"
ALERTS = k8s.REPO_ROOT / "monitoring" / "alerts.yml"
COMMITTED = k8s.K8S_DIR / "components" / "monitoring" / "prometheusrule.yaml"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prometheusrule", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_committed_prometheusrule_is_generated_from_alerts_yml(generator):
    assert COMMITTED.read_text() == generator.render(ALERTS.read_text()), (
        f"{COMMITTED} is stale: run python scripts/k8s/prometheusrule.py"
    )
    proc = _run("--check")
    assert proc.returncode == 0, proc.stderr


def test_rule_groups_are_those_of_alerts_yml():
    committed = yaml.safe_load(COMMITTED.read_text())
    assert committed["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_rendered_overlays_carry_the_same_groups(rendered):
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for overlay, docs in rendered.items():
        rule = k8s.find(docs, "PrometheusRule", "iris-classifier")
        assert rule["spec"]["groups"] == groups, overlay


def test_check_reports_a_stale_file_and_a_rewrite_fixes_it(tmp_path):
    alerts = tmp_path / "alerts.yml"
    output = tmp_path / "prometheusrule.yaml"
    doc = yaml.safe_load(ALERTS.read_text())
    output.write_text(COMMITTED.read_text())
    doc["groups"][0]["rules"][0]["expr"] = "vector(1) > 0"
    alerts.write_text(yaml.safe_dump(doc))

    stale = _run("--check", "--alerts", str(alerts), "--output", str(output))
    assert stale.returncode == 1
    assert "out of date" in stale.stderr

    assert _run("--alerts", str(alerts), "--output", str(output)).returncode == 0
    assert _run("--check", "--alerts", str(alerts), "--output", str(output)).returncode == 0
    rewritten = yaml.safe_load(output.read_text())
    assert rewritten["spec"]["groups"][0]["rules"][0]["expr"] == "vector(1) > 0"


def test_a_rule_file_without_groups_is_refused(generator):
    with pytest.raises(ValueError, match="groups"):
        generator.render("rules: []\n")


def test_scraped_serving_pods_get_the_job_name_every_rule_selects(rendered):
    """The alerts select job="iris-classifier"; the Operator names the job after the
    Service unless jobLabel says otherwise, and the Service is called iris-serving."""
    for overlay, docs in rendered.items():
        monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
        label = monitor["spec"]["jobLabel"]
        services = [
            d
            for d in docs
            if d["kind"] == "Service"
            and all(
                d["metadata"]["labels"].get(k) == v
                for k, v in monitor["spec"]["selector"]["matchLabels"].items()
            )
        ]
        assert services, overlay
        for service in services:
            assert service["metadata"]["labels"][label] == "iris-classifier", overlay
