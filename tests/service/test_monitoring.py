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
    exported = set(re.findall(r"^([a-z_]+)", httpx.get(server.url + "/metrics").text, re.MULTILINE))
    used = {name for expr in exprs() for name in METRIC.findall(expr)}
    # Counters that only appear after their first event.
    lazy = {"iris_retrain_jobs_total", "iris_model_reloads_total"}
    assert used, "no metrics found in monitoring/"
    assert used - exported - lazy == set()


def test_prometheus_config_scrapes_the_metrics_path():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"]
