"""Two replicas on one registry: a real mlflow server backed by a real PostgreSQL database."""

from __future__ import annotations

import shutil
import threading
import time

from harness.servers import bento_server
from harness.training import train_home
from tests.utils.jobs import retrain_and_wait, served_version
from tests.utils.mlflow_server import mlflow_server
from tests.utils.postgres import postgres_server

TOKEN = "fleet-token-5e"
RELOAD_S = 1.0
FOLLOW_S = RELOAD_S * 5 + 40
"""A replica follows a champion trained elsewhere within a poll plus one fetch subprocess
(it imports MLflow and scikit-learn to download and check the version: 3-10 s on a busy
2-core machine), twice if the champion moves again meanwhile."""


def wait_serving(server, version: str, timeout: float) -> float:
    started = time.monotonic()
    while served_version(server.url) != version:
        assert time.monotonic() - started < timeout, (
            f"{server.url} still serves {served_version(server.url)}"
        )
        time.sleep(0.1)
    return time.monotonic() - started


def test_two_replicas_follow_one_champion_and_lose_no_version(tmp_path, record_property):
    from mlflow import MlflowClient

    with (
        postgres_server() as database,
        mlflow_server(tmp_path / "mlflow", backend_uri=database) as registry,
    ):
        # v1 @champion, outdated: the first retrain is better and promoted.
        seed = train_home(tmp_path / "seed", tracking_uri=registry.url, outdated=True)
        # Each replica has its own BentoML store, as separate machines or containers do: a
        # version trained on one reaches the other through the registry only.
        stores = {
            name: shutil.copytree(seed.env["BENTOML_HOME"], tmp_path / name / "bentoml")
            for name in ("replica-a", "replica-b")
        }
        replicas_env = [
            {
                **seed.env,
                "IRIS_HOME": str(tmp_path / name),
                "BENTOML_HOME": str(store),
                "IRIS_ADMIN_TOKEN": TOKEN,
                "IRIS_RELOAD_INTERVAL_S": str(RELOAD_S),
            }
            for name, store in stores.items()
        ]
        with (
            bento_server(replicas_env[0], tmp_path / "a") as a,
            bento_server(replicas_env[1], tmp_path / "b") as b,
        ):
            assert served_version(a.url) == served_version(b.url) == "1"

            job = retrain_and_wait(a.url, TOKEN)
            assert job["state"] == "succeeded" and job["version"] == "2", job
            assert job["promotion"]["promoted"] is True, job
            lag = wait_serving(b, "2", timeout=FOLLOW_S)  # the other replica follows

            jobs: dict[str, dict] = {}
            threads = [
                threading.Thread(
                    target=lambda s=s, k=k: jobs.__setitem__(k, retrain_and_wait(s.url, TOKEN))
                )
                for k, s in (("a", a), ("b", b))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(400)
            assert {j["state"] for j in jobs.values()} == {"succeeded"}, jobs
            assert sorted(j["version"] for j in jobs.values()) == ["3", "4"]

            client = MlflowClient(tracking_uri=registry.url, registry_uri=registry.url)
            versions = sorted(
                int(v.version) for v in client.search_model_versions("name='iris-classifier'")
            )
            assert versions == [1, 2, 3, 4]  # no version lost
            # Both are the same model as v2 again: the gate keeps v2 and makes one of them
            # challenger (whichever finished last).
            assert not any(j["promotion"]["promoted"] for j in jobs.values()), jobs
            champion = client.get_model_version_by_alias("iris-classifier", "champion").version
            aliases = client.get_registered_model("iris-classifier").aliases
            assert champion == "2" and str(aliases.get("challenger")) in ("3", "4"), aliases
            wait_serving(a, champion, timeout=FOLLOW_S)
            wait_serving(b, champion, timeout=FOLLOW_S)
    record_property(
        "reliability",
        "fleet held: 2 replicas on mlflow server + PostgreSQL;"
        f" replica B followed A's retrain in {lag:.1f} s;"
        f" concurrent retrains -> versions {versions}, one champion (v{champion}) served by both",
    )
