"""The challenger on live traffic: a sticky canary split set in the registry, and shadow
scoring whose agreement matches an offline comparison of the two models."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from harness.servers import bento_server, capture_sink_pids
from harness.state import download_version
from harness.training import iris_train, train_home
from training.model_io import load_classifier
from training.schema import FEATURES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """v1 champion, v2 (another seed and split) challenger, in a registry of their own."""
    home = train_home(tmp_path_factory.mktemp("challenger-home"))
    iris_train({**home.env, "IRIS_SEED": "5", "IRIS_TEST_SIZE": "0.3"}, "run")
    iris_train(home.env, "promote", "1")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=home.tracking_uri, registry_uri=home.tracking_uri)
    client.set_registered_model_alias("iris-classifier", "challenger", "2")
    return home


@pytest.fixture(scope="module")
def server(two_versions, tmp_path_factory):
    root = tmp_path_factory.mktemp("challenger-server")
    env = {
        **two_versions.env,
        "IRIS_RELOAD_INTERVAL_S": "0.5",
        "IRIS_SHADOW_RATE": "1.0",
        "IRIS_CAPTURE_DIR": str(root / "captures"),
        "IRIS_CAPTURE_FLUSH_S": "0.2",
    }
    with bento_server(env, root / "logs", workers=2) as srv:
        srv.captures = root / "captures"
        yield srv


def flowers(n: int, seed: int) -> np.ndarray:
    """Flowers all over the measured range: the two forests disagree on some of them."""
    rng = np.random.default_rng(seed)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    return np.round(rng.uniform(low, high, size=(n, 4)), 1)


def counter(text: str, name: str) -> float:
    match = re.search(rf'^{name}\{{challenger="2",champion="1"\}} ([0-9.]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_shadow_agreement_equals_an_offline_comparison(server, two_versions, tmp_path):
    rows = flowers(400, seed=1)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        deadline = time.monotonic() + 60
        while len(_loaded_by(two_versions)) < 2:  # each worker loads it at its first poll
            assert time.monotonic() < deadline, "the challenger was not loaded by both workers"
            time.sleep(0.3)
        for row in rows:
            r = client.post("/predict", json=dict(zip(FEATURES, row.tolist(), strict=True)))
            assert r.status_code == 200 and r.json()["model"]["version"] == "1"
        deadline = time.monotonic() + 15  # shadow scores come within about a second
        while counter(metrics := client.get("/metrics").text, "iris_shadow_scored_total") < len(
            rows
        ):
            assert time.monotonic() < deadline, "not every request was scored in shadow"
            time.sleep(0.3)
        time.sleep(1.5)  # one more flush: nothing beyond the requests may be scored
        metrics = client.get("/metrics").text
    scored = counter(metrics, "iris_shadow_scored_total")
    agreed = counter(metrics, "iris_shadow_agreed_total")
    assert scored == len(rows)
    # Offline: both registered versions, loaded with scikit-learn, on the same inputs.
    v1, v2 = (
        load_classifier(
            download_version(two_versions.tracking_uri, "iris-classifier", v, tmp_path / v)
        )
        for v in ("1", "2")
    )
    frame = pd.DataFrame(rows.astype(np.float32), columns=list(FEATURES))
    offline = (v1.estimator.predict(frame) == v2.estimator.predict(frame)).sum()
    assert agreed == offline
    assert 0 < agreed < scored  # the two models do disagree somewhere: the test can tell
    # The captured shadow answers are never returned, and match the champion's ids.
    deadline = time.monotonic() + 15  # the capture files follow within a flush or two
    while (
        (captured := pd.read_parquet(server.captures))["role"] == "shadow"
    ).sum() < scored and time.monotonic() < deadline:
        time.sleep(0.3)
    shadow = captured[captured["role"] == "shadow"].set_index("prediction_id")["species"]
    served = captured[captured["role"] == "champion"].set_index("prediction_id")["species"]
    assert len(shadow) == len(rows) and set(shadow.index) <= set(served.index)
    assert (shadow == served.loc[shadow.index]).sum() == agreed
    # The capture sinks scored them (one kept-alive connection: one worker, one sink),
    # with ONNX Runtime and without pandas.
    maps = [Path(f"/proc/{pid}/maps").read_text() for pid in capture_sink_pids(server).values()]
    assert any("/site-packages/onnxruntime/" in m for m in maps), "no sink loaded the challenger"
    assert not any("/site-packages/pandas/" in m for m in maps), "a capture sink imported pandas"


def test_canary_split_is_sticky_and_close_to_the_registry_share(server, two_versions):
    iris_train(two_versions.env, "canary", "10")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        deadline = time.monotonic() + 30
        while True:  # every worker follows the tag within a few polls
            versions = {
                client.post(
                    "/predict",
                    json=dict(zip(FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True)),
                    headers={"x-client-key": f"warm-{i}"},
                ).json()["model"]["version"]
                for i in range(60)
            }
            if "2" in versions:
                break
            assert time.monotonic() < deadline, "the canary split was never followed"
        time.sleep(1.5)
        body = dict(zip(FEATURES, [6.0, 2.9, 4.5, 1.5], strict=True))
        answers = [
            client.post("/predict", json=body, headers={"x-client-key": f"client-{i}"}).json()
            for i in range(2000)
        ]
        share = sum(a["model"]["alias"] == "challenger" for a in answers) / len(answers)
        assert 0.07 <= share <= 0.13, share
        assert {a["model"]["version"] for a in answers if a["model"]["alias"] == "challenger"} == {
            "2"
        }
        for i in range(30):  # one client key, one model, every time
            seen = {
                client.post("/predict", json=body, headers={"x-client-key": f"client-{i}"}).json()[
                    "model"
                ]["version"]
                for _ in range(5)
            }
            assert seen == {answers[i]["model"]["version"]}
        metrics = client.get("/metrics").text
        assert re.search(r'iris_predictions_total\{model_version="2",species="[^"]+"\} \d', metrics)
    iris_train(two_versions.env, "canary", "0")


def _loaded_by(home) -> set[str]:
    """PIDs of the workers that logged loading challenger v2."""
    path = home.home / "logs" / "service.log"
    text = path.read_text() if path.exists() else ""
    return set(re.findall(r"\[(\d+)\] serving\.served_model: Challenger v2 loaded", text))


def test_promote_challenger_ends_the_canary_and_every_worker_follows(server, two_versions):
    iris_train(two_versions.env, "canary", "50")
    out = iris_train(two_versions.env, "promote-challenger").stdout
    assert "@champion -> v2" in out
    body = dict(zip(FEATURES, [6.0, 2.9, 4.5, 1.5], strict=True))
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while True:
            models = [
                client.post("/predict", json=body, headers={"x-client-key": f"k{i}"}).json()[
                    "model"
                ]
                for i in range(40)
            ]
            if all(m["version"] == "2" and m["alias"] == "champion" for m in models):
                break
            assert time.monotonic() < deadline, models[:3]
            time.sleep(0.3)
    # No challenger is left, so a canary cannot be started by mistake.
    refused = iris_train(two_versions.env, "canary", "10", check=False)
    assert refused.returncode == 1 and "has no challenger" in refused.stderr
