"""schemathesis explores the whole OpenAPI document against a real server: no failures,
and no operation it could not reach (no "missing test data", no "missing auth").

The document alone must be enough: the model name is an enum, versions and job ids have
patterns and examples, and links lead from ``/retrain`` to its job, from ``/predict`` to
``/feedback``, from the V2 index and metadata to the versioned routes. schemathesis runs
as its CLI (``--checks all``) with the admin token, and its JSON report is the evidence.

The server has a registry of its own: the exploration really retrains (``POST /retrain``
202, then 409 while the job runs), which registers new versions. It does not follow the
registry (the version it serves stays the one the links find) and serves the champion
only on ``/versions/{version}`` routes (``IRIS_LOADED_VERSIONS=0``), because every other
version costs a registry fetch subprocess of several seconds, which random versions would
multiply. ``POST .../unload`` runs last, in a run of its own: while the model is
unloaded every model route answers 503, by design.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.homes import TrainedHome
from harness.servers import BIN, Server, bento_server
from harness.training import train_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "explore-token-5c1d"
UNLOAD = "/v2/repository/models/{model}/unload"
REACH_WARNINGS = ("missing_test_data", "missing_auth")


@pytest.fixture(scope="module")
def explore_home(tmp_path_factory) -> TrainedHome:
    """A registry of this module's own: the exploration retrains."""
    return train_home(tmp_path_factory.mktemp("explore-home"))


@pytest.fixture(scope="module")
def explore_server(explore_home, tmp_path_factory) -> Iterator[Server]:
    env = {
        **explore_home.env,
        "IRIS_ADMIN_TOKEN": TOKEN,
        "IRIS_FOLLOW_REGISTRY": "false",
        "IRIS_LOADED_VERSIONS": "0",
        # Captures are spooled every 10 ms and indexed by a sink that is not niced below
        # the exploring client, so that the feedback a link sends right after its
        # prediction finds it (feedback for ids not yet indexed is a 404 by design).
        "IRIS_CAPTURE_FLUSH_S": "0.01",
        "IRIS_CAPTURE_SINK_NICE": "0",
    }
    with bento_server(env, tmp_path_factory.mktemp("explore-logs")) as server:
        yield server


def schemathesis_run(server: Server, report: Path, *selection: str) -> dict:
    """``schemathesis run`` over the served document; its JSON report."""
    argv = [
        str(BIN / "schemathesis"),
        "run",
        server.url + "/docs.json",
        "--checks",
        "all",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "--max-examples",
        "25",
        "--seed",
        "20261129",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *selection,
    ]
    # cwd: the CLI keeps a .schemathesis/ cache in its working directory.
    proc = subprocess.run(
        argv, cwd=report.parent, capture_output=True, text=True, timeout=600, check=False
    )
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    result["output"] = proc.stdout
    return result


def problems(report: dict) -> list[str]:
    """What keeps a run from being clean: failures, errors, untested operations, and
    operations schemathesis warns it could not reach."""
    found = [f"{f['code']} {f['title']}: {f['operations']}" for f in report["failures"]]
    found += [f"error {e['title']} x{e['count']}" for e in report["errors"]]
    operations = report["operations"]
    if operations["tested"] != operations["selected"] or operations["errored"]:
        found.append(f"operations: {operations}")
    for kind in REACH_WARNINGS:
        for label in report["warnings"].get(kind, []):
            found.append(f"{kind}: {label}")
    if not report["complete"]:
        found.append(f"run incomplete: {report['stop_reason']}")
    return found


def test_problems_names_failures_errors_and_unreached_operations():
    clean = {
        "failures": [],
        "errors": [],
        "operations": {"selected": 2, "tested": 2, "errored": 0},
        "warnings": {"missing_test_data": [], "missing_auth": [], "rate_limited": ["x"]},
        "complete": True,
        "stop_reason": "completed",
    }
    assert problems(clean) == []
    dirty = {
        **clean,
        "failures": [{"code": "ST201", "title": "accepted", "operations": ["POST /x"]}],
        "operations": {"selected": 2, "tested": 1, "errored": 0},
        "warnings": {"missing_test_data": ["GET /jobs/{job_id}"], "missing_auth": ["GET /y"]},
    }
    found = problems(dirty)
    assert len(found) == 4
    assert "missing_test_data: GET /jobs/{job_id}" in found
    assert "missing_auth: GET /y" in found


def test_schemathesis_explores_every_operation_cleanly(explore_server, tmp_path, record_property):
    main = schemathesis_run(explore_server, tmp_path / "main.json", "--exclude-path", UNLOAD)
    assert problems(main) == [], main["output"][-6000:]
    # The repository routes alone; no stateful phase (their links lead to excluded routes).
    unload = schemathesis_run(
        explore_server,
        tmp_path / "unload.json",
        "--include-path-regex",
        "^/v2/repository/",
        "--phases",
        "examples,coverage,fuzzing",
    )
    assert problems(unload) == [], unload["output"][-6000:]

    # "No missing test data" means every operation was served at least once, not only
    # refused; the server's own records agree for the two that need links to get there.
    jobs = httpx.get(explore_server.url + "/jobs/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert jobs.json()["jobs"], "the exploration never started a retrain"
    labels = re.findall(r"^iris_feedback_total\{[^}]*\} (\d+)", httpx.get(
        explore_server.url + "/metrics").text, re.M)  # fmt: skip
    assert sum(float(n) for n in labels) > 0, "no feedback was ever stored"
    assert main["test_cases"]["generated"] > 100
    record_property(
        "reliability",
        f"schemathesis --checks all over /docs.json: all {main['operations']['total']} operations,"
        f" {main['test_cases']['generated'] + unload['test_cases']['generated']} cases,"
        " no failures, every operation reached",
    )
