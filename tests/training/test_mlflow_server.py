"""The pipeline against a real ``mlflow server`` on 127.0.0.1 (proxied artifacts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from harness.homes import TrainedHome, train_home
from harness.state import alias_version, list_store
from tests.utils.mlflow_server import MlflowServer, mlflow_server
from training.data import read_split
from training.model_io import load_classifier
from training.schema import CHAMPION, TARGET

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Remote:
    server: MlflowServer
    trained: TrainedHome


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(root / "server") as server:
        home = root / "home"
        yield Remote(server, train_home(home, home / "bentoml", tracking_uri=server.url))


def test_champion_is_registered_on_the_server(remote: Remote) -> None:
    client = remote.trained.client()
    name = remote.trained.settings.model_name
    result = remote.trained.result

    assert (result["version"], result["promoted"]) == ("1", True)
    assert alias_version(client, name, CHAMPION) == "1"
    assert client.get_model_version(name, "1").run_id == result["best_run_id"]
    runs = client.search_runs(
        [client.get_run(result["parent_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
    )
    assert {r.info.run_name for r in runs} == {"logistic_regression", "random_forest"}
    for run in runs:
        assert (
            run.data.metrics["test_accuracy"]
            == result["candidates"][run.info.run_name]["test_accuracy"]
        )


def test_artifacts_go_through_the_server_not_the_local_home(remote: Remote) -> None:
    client = remote.trained.client()
    experiment = client.get_experiment_by_name(remote.trained.settings.experiment_name)
    best = remote.trained.result["best_run_id"]

    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert list(remote.server.artifacts.rglob(f"{best}/artifacts/confusion_matrix.json"))
    assert len(list(remote.server.artifacts.rglob("model.skops"))) == 2  # one per candidate
    assert not (remote.trained.home / "mlruns").exists()
    assert not (remote.trained.home / "mlflow.db").exists()


def test_champion_from_the_server_is_in_the_store_and_scores_as_logged(remote: Remote) -> None:
    trained = remote.trained
    store = list_store(trained.bentoml_home, trained.settings.bento_model_name)

    [stored] = store.models
    assert stored.tag == store.latest == trained.bento_tag
    assert stored.labels["registry_version"] == "1"
    assert stored.labels["run_id"] == trained.result["best_run_id"]
    assert stored.metadata["metrics"] == trained.result["metrics"]

    model = load_classifier(stored.path / "mlflow_model")
    _, test = read_split(trained.settings.processed_dir)
    predicted = np.array(model.class_names)[
        model.predict_proba(test[list(model.feature_names)]).argmax(axis=1)
    ]
    assert (
        float(np.mean(predicted == test[TARGET].to_numpy()))
        == trained.result["metrics"]["test_accuracy"]
    )


def test_workers_find_the_champion_over_rest_as_mlflow_does(remote: Remote) -> None:
    """serving.champion_lookup asks MLflow's REST API itself (no MLflow in workers)."""
    from serving.champion_lookup import champion

    client = remote.trained.client()
    name = remote.trained.settings.model_name
    mv = client.get_model_version_by_alias(name, CHAMPION)
    found = champion(remote.server.url, name)
    assert found is not None and (found.version, found.run_id) == (str(mv.version), mv.run_id)
    assert champion(remote.server.url, "no-such-model") is None
    client.create_registered_model("no-alias-yet")  # exists, has no @champion: HTTP 400
    assert champion(remote.server.url, "no-alias-yet") is None
