"""The dashboard and alerts only use metrics that a live server really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).parents[2] / "monitoring"
METRIC = re.compile(r"\b((?:iris|bentoml)_[a-z_]+)")


def exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana" / "iris-classifier.json").read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    found += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    return found


def test_every_metric_in_dashboard_and_alerts_is_exported(server):
    httpx.post(
        server.url + "/predict",
        json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    )
    text = httpx.get(server.url + "/metrics").text
    exported = set(re.findall(r"^([a-z_]+)", text, re.MULTILINE))
    used = {name for expr in exprs() for name in METRIC.findall(expr)}
    assert used, "no metrics found in monitoring/"
    # Every series an alert reads exists from start-up, before its first event.
    assert used - exported == set()
    for outcome, promoted in (("failed", "false"), ("succeeded", "true"), ("succeeded", "false")):
        assert f'iris_retrain_jobs_total{{outcome="{outcome}",promoted="{promoted}"}} 0.0' in text
    for alias in ("champion", "challenger"):
        assert f'iris_model_reload_failures_total{{alias="{alias}"}} 0.0' in text
    assert re.search(r"^iris_model_reloads_total 0\.0$", text, re.M)


def test_endpoint_label_is_bounded_to_route_templates(server):
    """A job id or a random path must not become a time series of its own."""
    for path in ("/jobs/3f0c9a1e-2b7d-4c55", "/jobs/another-id", "/wp-login.php", "/x/y/z"):
        httpx.get(server.url + path)
    endpoints = set(re.findall(r'endpoint="([^"]*)"', httpx.get(server.url + "/metrics").text))
    assert {"/jobs/{job_id}", "other"} <= endpoints
    assert not any(e.startswith("/jobs/") and e != "/jobs/{job_id}" for e in endpoints), endpoints
    assert not {"/wp-login.php", "/x/y/z"} & endpoints


def test_prometheus_config_scrapes_the_metrics_path():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"]
