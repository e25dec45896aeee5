"""Faults: a worker SIGKILLed, the registry down, a retrain killed, bad data, a tampered model."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from harness.servers import bento_server, free_port, worker_pids
from harness.training import iris_train, train_home
from tests.utils import jobs
from tests.utils.jobs import served_version, start_retrain
from tests.utils.load import Load
from tests.utils.mlflow_server import mlflow_server

TOKEN = "fault-token-77"


def server_env(home, **extra) -> dict[str, str]:
    return {**home.env, "IRIS_ADMIN_TOKEN": TOKEN, "IRIS_RELOAD_INTERVAL_S": "1", **extra}


def retrain(server) -> str:
    return start_retrain(server.url, TOKEN)


def wait_job(server, job_id: str, timeout: float = 180) -> dict:
    return jobs.wait_job(server.url, TOKEN, job_id, timeout)


def served(server) -> str:
    return served_version(server.url)


def served_pids(server) -> set[str]:
    """PIDs with an ``iris_served_model_version`` series on /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return set(re.findall(r'iris_served_model_version\{[^}]*pid="(\d+)"', text))


def test_worker_killed_under_load_recovers(tmp_path, record_property):
    home = train_home(tmp_path / "home")
    with bento_server(server_env(home), tmp_path, workers=2) as server:
        before = worker_pids(server)
        assert len(before) == 2
        with Load(server.url, clients=16, max_seconds=60) as load:
            time.sleep(3)
            killed_at = time.monotonic()
            os.kill(before[0], signal.SIGKILL)
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                now = worker_pids(server)
                if len(now) == 2 and before[0] not in now:
                    break
                time.sleep(0.2)
            recovered_in = time.monotonic() - killed_at
            time.sleep(5)  # keep loading the recovered server
            result = load.stop()
        now = worker_pids(server)
        assert len(now) == 2, "the killed worker was not replaced"
        assert recovered_in < 45
        late = [t for t in result.failure_times if t > killed_at + recovered_in + 1]
        assert late == [], result.failed[-5:]  # after recovery, nothing fails
        assert len(result.failed) <= 16, result.failed[:5]  # at most the in-flight requests
        assert result.ok > 100
        # The killed worker's per-process series left with it: no ghost on the dashboard,
        # no false "workers serve different versions" after the next promotion.
        # (The replacement worker exports its own series once it has loaded its model.)
        live = {str(p) for p in now}
        deadline = time.monotonic() + 60
        while (exported := served_pids(server)) != live and time.monotonic() < deadline:
            assert str(before[0]) not in exported, exported  # the ghost is gone already
            time.sleep(0.5)
        assert exported == live, (exported, now)
    record_property(
        "reliability",
        f"worker SIGKILL: replaced in {recovered_in:.1f} s, {len(result.failed)} in-flight"
        f" requests failed, none after; its metrics series removed; {result.summary()}",
    )


def test_registry_down_then_back(tmp_path, record_property):
    port = free_port()
    root = tmp_path / "mlflow"
    with mlflow_server(root, port=port) as registry:
        home = train_home(tmp_path / "home", tracking_uri=registry.url, outdated=True)
    # The registry is down while the service starts: it serves the packed model.
    env = server_env(home, IRIS_RETRAIN_MLFLOW_RETRIES="0")
    with bento_server(env, tmp_path, workers=1) as server, Load(server.url, clients=8) as load:
        assert served(server) == "1"
        failed = wait_job(server, retrain(server))
        assert failed["state"] == "failed"
        assert "Connection refused" in failed["error"] or "connect" in failed["error"].lower(), (
            failed
        )
        assert served(server) == "1"
        with mlflow_server(root, port=port):
            assert iris_train(home.env, "champion").stdout.strip() == "1"  # untouched
            job = wait_job(server, retrain(server))
            assert job["state"] == "succeeded", job
            assert job["version"] == "2" and job["promotion"]["promoted"] is True, job
            # The worker sees the alias move before the retrain's own import lands, so it
            # fetches v2 from the server in a subprocess that imports MLflow and checks the
            # model: 5-20 s on a busy 2-core machine.
            deadline = time.monotonic() + 45
            while served(server) != "2" and time.monotonic() < deadline:
                time.sleep(0.3)
            assert served(server) == "2"
        result = load.stop()
    assert result.failed == []
    assert set(result.versions) <= {"1", "2"}
    record_property(
        "reliability",
        f"registry down: retrain failed ({failed['error'][:60]}), champion kept v1;"
        f" back: retrain made v{job['version']}, served; {result.summary()}",
    )


def test_retrain_killed_halfway_changes_nothing_and_next_succeeds(tmp_path, record_property):
    home = train_home(tmp_path / "home", outdated=True)  # so that the next retrain promotes
    with bento_server(server_env(home), tmp_path) as server:
        job_id = retrain(server)
        jobs_db = Path(home.home) / "var" / "jobs.sqlite"
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            with sqlite3.connect(jobs_db) as conn:
                pid = conn.execute(
                    "SELECT pid FROM iris_retrain_jobs WHERE id = ?", (job_id,)
                ).fetchone()[0]
            time.sleep(0.1)
        time.sleep(3)  # into training: MLflow runs exist, nothing registered or promoted yet
        os.kill(pid, signal.SIGKILL)
        job = wait_job(server, job_id)
        assert job["state"] == "failed"
        assert "-9" in job["error"] or "interrupted" in job["error"]
        killed_error = job["error"]
        assert iris_train(home.env, "champion").stdout.strip() == "1"
        assert served(server) == "1"
        job = wait_job(server, retrain(server))
        assert job["state"] == "succeeded", job
        assert iris_train(home.env, "champion").stdout.strip() == job["version"]
    record_property(
        "reliability",
        f"retrain SIGKILLed mid-run: job failed ({killed_error}), champion kept v1,"
        f" next retrain made v{job['version']}",
    )


def test_unreadable_or_corrupt_data_fails_the_job_by_name(tmp_path, record_property):
    home = train_home(tmp_path / "home")
    data = tmp_path / "incoming.csv"
    header = "Id,SepalLengthCm,SepalWidthCm,PetalLengthCm,PetalWidthCm,Species\n"
    breakages = {
        "ragged row": lambda: data.write_text(header + "1,5.1,3.5\n"),
        "binary garbage": lambda: data.write_bytes(os.urandom(4096)),
        "a directory": lambda: data.mkdir(),
        "missing": lambda: data.rmdir(),
    }
    errors = []
    with bento_server(server_env(home, IRIS_RETRAIN_DATA=str(data)), tmp_path) as server:
        for name, breakage in breakages.items():
            breakage()
            job = wait_job(server, retrain(server))
            assert job["state"] == "failed", (name, job)
            errors.append(f"{name}: {job['error'][:50]}")
            assert "incoming.csv" in job["error"], (name, job)
            assert str(tmp_path) not in job["error"], (name, job)
            assert served(server) == "1"
            if data.is_file():
                data.unlink()
    assert iris_train(home.env, "champion").stdout.strip() == "1"
    record_property(
        "reliability", "bad retrain data, each job failed by name: " + "; ".join(errors)
    )


def test_tampered_model_is_refused_and_previous_keeps_serving(tmp_path, record_property):
    from tests.utils.tamper import register_tampered

    home = train_home(tmp_path / "home")
    with bento_server(server_env(home), tmp_path, workers=1) as server:
        version = register_tampered(home.tracking_uri, "1", tmp_path, "iris-classifier")
        iris_train(home.env, "promote", str(version))
        deadline = time.monotonic() + 90  # the fetch subprocess imports MLflow: seconds
        while "untrusted types" not in server.log() and time.monotonic() < deadline:
            assert served(server) == "1"
            time.sleep(0.5)
        assert "untrusted types" in server.log()
        time.sleep(3)  # three more reload intervals: still refused, still serving v1
        assert served(server) == "1"
        # and not fetched again at every poll (each try is a subprocess importing MLflow)
        assert server.log().count(f"Could not load champion v{version}") == 1
        assert not (tmp_path / "pwned").exists()
        # ...and an operator sees it: the reload-failure counter that IrisModelReloadFailing reads.
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        failures = re.search(
            r'^iris_model_reload_failures_total\{alias="champion"\} ([0-9.]+)$', metrics, re.M
        )
        assert failures and float(failures.group(1)) == 1.0, failures
    record_property(
        "reliability",
        f"tampered v{version} promoted: refused (untrusted types), v1 kept serving,"
        f" iris_model_reload_failures_total={failures.group(1)}",
    )
