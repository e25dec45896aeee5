"""Prometheus's own tool checks the scrape config and the alerts, and unit-tests every alert.

``monitoring/alerts.test.yml`` has, for each alert, a case where it fires and one where it
must stay quiet; this test also makes sure no alert is left without both.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.utils.containers import unavailable

MONITORING = Path(__file__).parents[1] / "monitoring"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool not found (Debian package `prometheus`)", "promtool")
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


def test_config_and_rules_pass_promtool_checks(promtool):
    config = run(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(promtool, "check", "rules", "--lint=all", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    count = sum(len(group["rules"]) for group in groups)
    assert count >= 10 and f"SUCCESS: {count} rules found" in rules.stdout, rules.stdout


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests(promtool):
    result = run(promtool, "test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    fires, quiet = set(), set()
    for case in yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts with no case where they fire"
    assert alerts - quiet == set(), "alerts with no case where they stay quiet"


def test_every_rule_selects_this_service_job_only():
    for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            selectors = expr.count("{")
            assert selectors and expr.count('job="iris-classifier"') == selectors, rule["alert"]
            assert rule["annotations"]["runbook"].startswith("monitoring/README.md#")
