"""The whole pipeline on the shipped data into a temporary SQLite store (session home)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import RAW_CSV, REPO_ROOT, run_cli
from harness.homes import TrainedHome
from harness.state import alias_version, download_version
from training.data import read_split
from training.model_io import TRUSTED_TYPES, load_classifier
from training.schema import CHALLENGER, CHAMPION, FEATURES, SPECIES, TARGET
from training.train import CANDIDATES, PRIORITY_TAG

METRICS = ("test_accuracy", "test_f1_macro", "test_log_loss")


@pytest.fixture(scope="module")
def client(trained_home: TrainedHome):
    return trained_home.client()


@pytest.fixture(scope="module")
def children(trained_home: TrainedHome, client) -> dict:
    """The candidate runs of the session's pipeline run, by run name."""
    parent = trained_home.result["parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    return {run.info.run_name: run for run in runs}


@pytest.fixture(scope="module")
def model_dir(trained_home: TrainedHome, tmp_path_factory) -> Path:
    """The registered champion's model folder, downloaded from the registry."""
    dst = tmp_path_factory.mktemp("registered-model")
    return download_version(
        trained_home.tracking_uri, trained_home.settings.model_name, trained_home.version, dst
    )


def test_candidates_run_as_children_of_one_parent(trained_home, client, children) -> None:
    parent = client.get_run(trained_home.result["parent_run_id"])

    assert set(children) == {"logistic_regression", "random_forest"} == set(CANDIDATES)
    assert parent.info.run_name == "training"
    assert parent.data.params == {"seed": "1", "test_size": "0.2"}
    assert all(run.info.status == "FINISHED" for run in [parent, *children.values()])


def test_each_candidate_logs_its_test_metrics(trained_home, children) -> None:
    for name, run in children.items():
        logged = {k: run.data.metrics[k] for k in METRICS}
        assert logged == trained_home.result["candidates"][name]
        assert 0.9 <= logged["test_accuracy"] <= 1.0, f"{name} is not learning the iris"
        assert 0.9 <= logged["test_f1_macro"] <= 1.0
        assert 0.0 < logged["test_log_loss"] < 0.5 and math.isfinite(logged["test_log_loss"])


def test_confusion_matrix_artifact_agrees_with_accuracy(client, children, tmp_path) -> None:
    for name, run in children.items():
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.json", "confusion_matrix.png"} <= artifacts, name
        local = client.download_artifacts(run.info.run_id, "confusion_matrix.json", str(tmp_path))
        cm = json.loads(Path(local).read_text())
        matrix = np.array(cm["matrix"])

        assert cm["labels"] == list(SPECIES)
        assert matrix.shape == (3, 3)
        assert matrix.sum(axis=1).tolist() == [10, 10, 10]  # stratified 30-row test set
        assert np.trace(matrix) / matrix.sum() == run.data.metrics["test_accuracy"]


def test_datasets_are_logged_as_inputs_with_digests(children) -> None:
    digests = set()
    for name, run in children.items():
        inputs = {
            next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
            for i in run.inputs.dataset_inputs
        }
        assert set(inputs) == {"training", "testing"}, name
        for context, rows in (("training", 120), ("testing", 30)):
            dataset = inputs[context]
            assert dataset.digest, f"{name}/{context} has no digest"
            assert json.loads(dataset.source) == {"uri": RAW_CSV.resolve().as_uri()}
            assert json.loads(dataset.profile)["num_rows"] == rows
        assert inputs["training"].digest != inputs["testing"].digest
        digests.add((inputs["training"].digest, inputs["testing"].digest))
    assert len(digests) == 1, "both candidates must see the same data"


def test_git_commit_is_recorded(trained_home, client, children) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    parent = client.get_run(trained_home.result["parent_run_id"])
    for run in [parent, *children.values()]:
        assert run.data.tags.get("mlflow.source.git.commit") == head.stdout.strip()


def test_model_is_skops_with_signature_example_and_pinned_requirements(model_dir) -> None:
    import yaml

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    sklearn_flavor = mlmodel["flavors"]["sklearn"]
    signature = json.loads(mlmodel["signature"]["inputs"])
    requirements = (model_dir / "requirements.txt").read_text().split()

    assert sklearn_flavor["serialization_format"] == "skops"
    assert sklearn_flavor["skops_trusted_types"] == list(TRUSTED_TYPES)
    assert [(col["name"], col["type"]) for col in signature] == [(f, "double") for f in FEATURES]
    assert (model_dir / mlmodel["saved_input_example_info"]["artifact_path"]).is_file()
    assert all("==" in line for line in requirements), requirements
    names = {line.split("==")[0] for line in requirements}
    assert (
        {"scikit-learn", "skops", "numpy", "scipy"}
        <= names
        <= {
            "mlflow",
            "scikit-learn",
            "skops",
            "numpy",
            "scipy",
        }
    )


def test_best_candidate_is_registered_as_champion(trained_home, client) -> None:
    name = trained_home.settings.model_name
    versions = client.search_model_versions(f"name = '{name}'")
    version = client.get_model_version(name, trained_home.version)

    assert [str(v.version) for v in versions] == ["1"]
    assert alias_version(client, name, CHAMPION) == "1"
    assert alias_version(client, name, CHALLENGER) is None
    assert version.run_id == trained_home.result["best_run_id"]
    assert version.tags["candidate"] == trained_home.result["best_candidate"]
    assert version.tags["promotion.decision"] == CHAMPION
    assert version.tags["promotion.reason"] == "no champion yet"
    assert trained_home.result["promoted"] is True


def test_selection_takes_best_accuracy_and_ties_go_to_the_random_forest(
    trained_home, children
) -> None:
    candidates = trained_home.result["candidates"]
    expected = min(
        candidates,
        key=lambda n: (-candidates[n]["test_accuracy"], children[n].data.tags[PRIORITY_TAG]),
    )

    assert trained_home.result["best_candidate"] == expected
    assert trained_home.result["metrics"] == candidates[expected]
    accuracies = {c["test_accuracy"] for c in candidates.values()}
    if len(accuracies) == 1:  # the shipped data ties at 29/30
        assert expected == "random_forest"


def test_decision_is_in_the_log(trained_home) -> None:
    log = (trained_home.home / "logs" / "training.log").read_text()

    assert "Version 1 -> champion: no champion yet" in log


def test_bento_store_holds_champion_with_labels_and_metadata(trained_home, bento_model) -> None:
    import bentoml

    name = trained_home.settings.bento_model_name
    assert [str(m.tag) for m in bentoml.models.list(name)] == [trained_home.bento_tag]
    assert bento_model.info.labels["registry_version"] == trained_home.version
    assert bento_model.info.labels["run_id"] == trained_home.result["best_run_id"]
    assert bento_model.info.metadata["metrics"] == trained_home.result["metrics"]
    assert bento_model.info.metadata["class_names"] == list(SPECIES)
    assert bento_model.info.metadata["feature_names"] == list(FEATURES)


def test_every_model_carries_its_training_data_profile(
    trained_home, client, model_dir, bento_model
):
    """In the registry version and in the BentoML model: the reference drift is measured
    against, made from exactly the training split."""
    from training import reference_profile

    train, _ = read_split(trained_home.settings.processed_dir)
    registered = reference_profile.read(model_dir)
    stored = reference_profile.read(Path(bento_model.path_of("mlflow_model")))
    assert registered == stored == reference_profile.build(train, registered["data_sha256_16"])
    assert registered["rows"] == len(train)
    parent = client.get_run(trained_home.result["parent_run_id"])
    assert registered["data_sha256_16"] == parent.data.tags["data_sha256_16"]


def test_stored_model_reproduces_logged_accuracy_on_processed_test_set(
    trained_home, champion
) -> None:
    _, test = read_split(trained_home.settings.processed_dir)

    proba = champion.predict_proba(test[list(champion.feature_names)])
    predicted = [champion.class_names[i] for i in proba.argmax(axis=1)]

    assert set(predicted) == set(SPECIES)
    accuracy = float(np.mean(np.array(predicted) == test[TARGET].to_numpy()))
    assert accuracy == trained_home.result["metrics"]["test_accuracy"]


def test_registered_model_matches_stored_model(model_dir, champion) -> None:
    registered = load_classifier(model_dir)
    values = np.random.default_rng(0).uniform(0.1, 8.0, size=(200, len(FEATURES)))
    grid = pd.DataFrame(values, columns=list(FEATURES))

    np.testing.assert_array_equal(registered.predict_proba(grid), champion.predict_proba(grid))


def test_importing_the_same_version_again_creates_no_duplicate(trained_home) -> None:
    import bentoml

    proc = run_cli("import", env=trained_home.env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{trained_home.bento_tag} (already present)"
    name = trained_home.settings.bento_model_name
    assert [str(m.tag) for m in bentoml.models.list(name)] == [trained_home.bento_tag]
