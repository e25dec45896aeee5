"""The real service's OCI image: built by `bentoml containerize`, run, predicted, retrained.

Runs the image exactly as deployed: no registry reachable (it serves the packed
champion), configuration from `-e` variables only, a non-root user.
"""

from __future__ import annotations

import json
import time

import httpx
import pandas as pd
import pytest

from harness.training import BUILD_SECRET
from tests.utils import containers as ct
from training.schema import FEATURES

pytestmark = [pytest.mark.container, pytest.mark.integration, pytest.mark.timeout(2400)]

TOKEN = "container-token-3c9e"


@pytest.fixture(scope="module")
def container(backend, image):
    env = {
        "IRIS_ADMIN_TOKEN": TOKEN,
        "IRIS_GRPC_PORT": str(ct.free_port()),
        "IRIS_GRPC_HOST": "127.0.0.1",
        "IRIS_RELOAD_INTERVAL_S": "1",
    }
    with ct.run_container(backend, image, env=env, ready_timeout=240) as running:
        yield running


def test_runs_as_non_root(container):
    assert container.exec("id", "-u").stdout.strip() != "0"
    assert container.exec("sh", "-c", "cat /proc/1/status | grep '^Uid:'").stdout.split()[1] != "0"


def test_serves_packed_champion_on_the_test_set(container, trained_home):
    test = pd.read_csv(trained_home.test_csv)
    rows = test[list(FEATURES)].to_numpy().tolist()
    with httpx.Client(base_url=container.base_url, timeout=30) as client:
        batch = client.post("/predict_batch", json={"instances": rows})
        assert batch.status_code == 200, batch.text
        answers = [p["species"] for p in batch.json()["predictions"]]
        assert batch.json()["model"]["version"] == trained_home.result["version"]
        for row, answer in zip(rows[:10], answers, strict=False):
            single = client.post("/predict", json=dict(zip(FEATURES, row, strict=True))).json()
            assert single["species"] == answer
    accuracy = sum(a == s for a, s in zip(answers, test["species"], strict=True)) / len(test)
    assert accuracy == pytest.approx(trained_home.result["metrics"]["test_accuracy"])


def test_authorized_retrain_inside_the_container(container):
    assert httpx.post(container.base_url + "/retrain").status_code == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    response = httpx.post(container.base_url + "/retrain", headers=auth)
    assert response.status_code == 202, response.text
    job_url = container.base_url + response.json()["status_url"]
    deadline = time.monotonic() + 300
    while (job := httpx.get(job_url, headers=auth).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["state"] == "succeeded", job
    # The embedded registry inside the container now has a champion; the service follows it.
    deadline = time.monotonic() + 30
    while "from registry" not in container.logs():
        assert time.monotonic() < deadline, container.logs()[-3000:]
        time.sleep(1)
    answer = httpx.post(
        container.base_url + "/predict", json=dict(zip(FEATURES, [6.9, 3.1, 5.8, 2.3], strict=True))
    )
    assert answer.json()["species"] == "Iris-virginica"
    assert TOKEN not in container.logs()


def test_no_secret_in_the_image(backend, image):
    inspect = backend.command("image", "inspect", image, timeout=60)
    config = json.loads(inspect.stdout)[0]
    assert BUILD_SECRET not in inspect.stdout
    env = config.get("Config", {}).get("Env") or config.get("config", {}).get("Env") or []
    assert not any(e.startswith("IRIS_ADMIN_TOKEN") for e in env)


def test_retrain_inside_the_container_against_a_remote_registry(backend, image, tmp_path):
    """With IRIS_TRACKING_URI set, the container follows and retrains into that server."""
    from mlflow import MlflowClient

    from harness.training import train_home
    from tests.utils.mlflow_server import mlflow_server

    with mlflow_server(tmp_path / "mlflow") as registry:
        # v1 on the remote server, outdated: the container's retrain is promoted.
        train_home(tmp_path / "home", tracking_uri=registry.url, outdated=True)
        env = {
            "IRIS_ADMIN_TOKEN": TOKEN,
            "IRIS_TRACKING_URI": registry.url,  # podman runs on the host network
            "IRIS_GRPC_PORT": str(ct.free_port()),
            "IRIS_GRPC_HOST": "127.0.0.1",
            "IRIS_RELOAD_INTERVAL_S": "1",
        }
        with ct.run_container(backend, image, env=env, ready_timeout=240) as running:
            auth = {"authorization": f"Bearer {TOKEN}"}
            response = httpx.post(running.base_url + "/retrain", headers=auth)
            assert response.status_code == 202, response.text
            job_url = running.base_url + response.json()["status_url"]
            deadline = time.monotonic() + 300
            while (job := httpx.get(job_url, headers=auth).json())["state"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline, job
                time.sleep(1)
            assert job["state"] == "succeeded", job
            assert job["version"] == "2"
            client = MlflowClient(tracking_uri=registry.url, registry_uri=registry.url)
            assert client.get_model_version_by_alias("iris-classifier", "champion").version == "2"
            deadline = time.monotonic() + 30
            body = {
                "sepal_length": 5.1,
                "sepal_width": 3.5,
                "petal_length": 1.4,
                "petal_width": 0.2,
            }
            while (
                httpx.post(running.base_url + "/predict", json=body).json()["model"]["version"]
                != "2"
            ):
                assert time.monotonic() < deadline, running.logs()[-3000:]
                time.sleep(0.5)
