"""Retrain over HTTP against a 2-worker server: auth, single flight, hot reload, failures."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from harness.homes import TrainedHome
from harness.servers import Server, bento_server
from harness.training import iris_train, train_home
from serving.oip.proto import grpc_predict_v2_pb2 as pb
from serving.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.schemas import ErrorResponse, RetrainResponse

pytestmark = pytest.mark.integration

TOKEN = "test-token-a8f3"
GOOD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
AUTH = {"authorization": f"Bearer {TOKEN}"}
RELOAD_S = 1.0


@pytest.fixture(scope="module")
def own_home(tmp_path_factory) -> TrainedHome:
    """A registry of this module's own: these tests retrain and move the champion. v1 is
    outdated, so the retrain on the shipped data is genuinely better and the gate promotes."""
    return train_home(tmp_path_factory.mktemp("retrain-home"), outdated=True)


@pytest.fixture(scope="module")
def retrain_csv(own_home) -> Path:
    path = own_home.home / "incoming" / "iris.csv"
    path.parent.mkdir()
    shutil.copy(Path(__file__).parents[2] / "data" / "raw" / "Iris.csv", path)
    return path


@pytest.fixture(scope="module")
def server2(own_home, retrain_csv, tmp_path_factory) -> Iterator[Server]:
    env = {
        **own_home.env,
        "IRIS_ADMIN_TOKEN": TOKEN,
        "IRIS_RELOAD_INTERVAL_S": str(RELOAD_S),
        "IRIS_RETRAIN_DATA": str(retrain_csv),
    }
    with bento_server(env, tmp_path_factory.mktemp("server2-logs"), workers=2) as srv:
        yield srv


def served_versions(server: Server) -> dict[str, str]:
    """Version each worker process serves, from the per-worker gauge on /metrics."""
    text = httpx.get(server.url + "/metrics").text
    return dict(
        re.findall(
            r'iris_served_model_version\{model_name="iris-classifier",pid="(\d+)"\} (\d+)', text
        )
    )


def wait_job(server: Server, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job['state']}")


def wait_all_workers(server: Server, version: str, workers: int = 2, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        versions = served_versions(server)
        if len(versions) == workers and set(versions.values()) == {version}:
            return versions
        time.sleep(0.2)
    raise AssertionError(f"workers still serve {served_versions(server)}, expected v{version}")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": TOKEN},
        {"authorization": "Basic " + TOKEN},
    ],
)
def test_retrain_refuses_without_the_right_token(server2, headers):
    response = httpx.post(server2.url + "/retrain", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text
    ErrorResponse.model_validate(response.json())
    assert httpx.get(server2.url + "/jobs/", headers=headers).status_code == 401


def test_retrain_option_must_be_a_boolean(server2):
    response = httpx.post(server2.url + "/retrain?include_feedback=maybe", headers=AUTH)
    assert response.status_code == 422
    assert "include_feedback" in ErrorResponse.model_validate(response.json()).error.message
    assert httpx.get(server2.url + "/jobs/", headers=AUTH).json()["jobs"] == []  # none started


def test_retrain_runs_in_background_single_flight_and_all_workers_reload(server2, own_home):
    assert set(served_versions(server2).values()) == {"1"}
    started = httpx.post(server2.url + "/retrain", headers=AUTH)
    assert started.status_code == 202, started.text
    job = RetrainResponse.model_validate(started.json())
    assert job.state in ("queued", "running")

    second = httpx.post(server2.url + "/retrain", headers=AUTH)
    assert second.status_code == 409
    assert second.json()["job"]["id"] == job.job_id

    # Predictions keep flowing while the training subprocess runs.
    with httpx.Client(base_url=server2.url, timeout=10) as client:
        while (state := client.get(job.status_url, headers=AUTH).json()["state"]) == "running":
            assert client.post("/predict", json=GOOD).status_code == 200
    final = wait_job(server2, job.job_id)
    assert final["state"] == "succeeded", final
    assert final["version"] == "2"
    assert final["promotion"]["promoted"] is True
    assert final["promotion"]["reason"].startswith("promoted, better than champion v1: accuracy")
    assert set(final["metrics"]) >= {"test_accuracy", "test_f1_macro", "test_log_loss"}
    assert final["started_at"] and final["finished_at"] and state

    versions = wait_all_workers(server2, "2")
    assert len(versions) == 2
    # And the answers say so, whichever worker takes the request (new connection each time).
    seen = {
        httpx.post(server2.url + "/predict", json=GOOD).json()["model"]["version"]
        for _ in range(20)
    }
    assert seen == {"2"}


def grpc_versions(server: Server, connections: int = 12) -> set[str]:
    """Versions reported over gRPC on fresh connections (SO_REUSEPORT spreads them)."""
    request = pb.ModelInferRequest(model_name="iris-classifier")
    request.inputs.add(
        name="features", datatype="FP32", shape=[1, 4]
    ).contents.fp32_contents.extend(GOOD.values())
    seen = set()
    for _ in range(connections):
        with grpc.insecure_channel(server.grpc_target) as channel:
            seen.add(
                pb_grpc.GRPCInferenceServiceStub(channel)
                .ModelInfer(request, timeout=10)
                .model_version
            )
    return seen


def test_manual_rollback_is_followed_by_every_worker_over_http_and_grpc(server2, own_home):
    iris_train(own_home.env, "promote", "1")
    wait_all_workers(server2, "1")
    assert grpc_versions(server2) == {"1"}
    # v1 is in this server's BentoML store: both workers load it from there, with no
    # fetch subprocess (logs/service.log is written before each swap).
    service_log = (own_home.home / "logs" / "service.log").read_text()
    assert service_log.count("v1 is in the local BentoML store") == 2
    iris_train(own_home.env, "promote", "2")
    wait_all_workers(server2, "2")
    assert grpc_versions(server2) == {"2"}


def test_failed_retrain_leaves_champion_and_served_model_untouched(server2, own_home, retrain_csv):
    before = served_versions(server2)
    champion = iris_train(own_home.env, "champion").stdout.strip()
    original = retrain_csv.read_bytes()
    retrain_csv.write_text(
        original.decode().replace("1.4,0.2,Iris-setosa", "1.4,abc,Iris-setosa", 1)
    )
    try:
        response = httpx.post(server2.url + "/retrain", headers=AUTH)
        assert response.status_code == 202, response.text
        job = wait_job(server2, response.json()["job_id"])
    finally:
        retrain_csv.write_bytes(original)
    assert job["state"] == "failed"
    assert (
        "line 2" in job["error"]
        and "PetalWidthCm" in job["error"]
        and "'abc' is not a number" in job["error"]
    )
    assert str(retrain_csv.parent) not in job["error"]
    time.sleep(RELOAD_S * 2)
    assert served_versions(server2) == before
    assert iris_train(own_home.env, "champion").stdout.strip() == champion
    metrics = httpx.get(server2.url + "/metrics").text
    assert 'iris_retrain_jobs_total{outcome="failed",promoted="false"} 1.0' in metrics


def test_every_worker_and_the_retrain_log_to_files(server2, own_home):
    """logs/service.log gets every worker's lines and BentoML's access log; logs/training.log
    gets the retrain subprocess, start to finish."""
    service_log = (own_home.home / "logs" / "service.log").read_text()
    reloaded_by = set(
        re.findall(r"\[(\d+)\] serving\.served_model: Now serving iris-classifier v2", service_log)
    )
    assert len(reloaded_by) == 2, reloaded_by  # both worker processes wrote to the one file
    assert re.search(r"path=/predict,.*status=200", service_log)
    assert TOKEN not in service_log
    training_log = (own_home.home / "logs" / "training.log").read_text()
    assert "serving.retrain_job: Retrain job" in training_log and "succeeded" in training_log
    # The retrain subprocess got the retrain's MLflow client settings (2 retries, 30 s),
    # not the fail-fast ones meant for the workers' model fetches.
    assert "(MLflow HTTP: 2 retries, 30 s timeout)" in training_log
    assert "(MLflow HTTP: 0 retries" not in training_log
    assert "Traceback" in training_log  # the failed retrain above is logged with its traceback
