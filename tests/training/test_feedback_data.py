"""Retraining on what was learned: labelled predictions join the training data, validated
like the shipped CSV, with both sources in the run's lineage."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from harness.cli import RAW_CSV
from harness.training import iris_train, train_home
from tests.unit.test_loop_monitor import single
from training.loop_store import FeedbackStore

pytestmark = pytest.mark.integration


def serve_and_label(store: FeedbackStore, rows: list[tuple[list[float], str, str]]) -> None:
    """Record served predictions and their labels, as the server and /feedback would."""
    now = time.time()
    store.index(
        single(f"{i:032x}", now + i, "1", predicted, values)
        for i, (values, predicted, _) in enumerate(rows)
    )
    store.label([(f"{i:032x}", truth) for i, (_, _, truth) in enumerate(rows)])


def test_retrain_with_feedback_trains_on_both_and_records_both(tmp_path):
    home = train_home(tmp_path / "home")
    loop = f"sqlite:///{tmp_path / 'loop.sqlite'}"
    env = {**home.env, "IRIS_LOOP_URI": loop}
    labelled = [([6.0, 2.9, 4.5, 1.5], "Iris-versicolor", "Iris-virginica")] * 6 + [
        ([5.0, 3.4, 1.5, 0.2], "Iris-setosa", "Iris-setosa")
    ] * 4
    serve_and_label(FeedbackStore(loop), labelled)

    out = tmp_path / "labelled.csv"
    assert "10 labelled predictions" in iris_train(env, "export-feedback", "--out", str(out)).stdout
    exported = pd.read_csv(out)
    assert list(exported.columns) == list(pd.read_csv(RAW_CSV).columns)
    assert (exported["Species"] == [truth for _, _, truth in labelled]).all()

    iris_train(env, "run", "--with-feedback", "--no-import")
    client = home.client()
    run = client.search_runs(
        [client.get_experiment_by_name("iris-classifier").experiment_id],
        "tags.`data.feedback_rows` = '10'",
    )
    assert run, "no run records the feedback rows"
    tags = run[0].data.tags
    assert tags["data.base_source"] == RAW_CSV.name
    assert len(tags["data.base_sha256_16"]) == len(tags["data.feedback_sha256_16"]) == 16
    train = pd.read_csv(home.settings.train_csv)
    test = pd.read_csv(home.settings.test_csv)
    assert len(train) + len(test) == 150 + 10  # the shipped rows plus every label


def test_a_bad_labelled_row_is_named_and_nothing_is_trained(tmp_path):
    home = train_home(tmp_path / "home")
    loop = f"sqlite:///{tmp_path / 'loop.sqlite'}"
    serve_and_label(FeedbackStore(loop), [([60.0, 2.9, 4.5, 1.5], "Iris-virginica", "Iris-setosa")])
    client = home.client()
    runs_before = len(client.search_runs([r.experiment_id for r in client.search_experiments()]))
    proc = iris_train({**home.env, "IRIS_LOOP_URI": loop}, "run", "--with-feedback", check=False)
    assert proc.returncode == 1
    assert "line 152" in proc.stderr and "SepalLengthCm" in proc.stderr, proc.stderr
    assert iris_train(home.env, "champion").stdout.strip() == "1"
    # Nothing was trained or registered: the validation stopped it first.
    assert len(client.search_runs([r.experiment_id for r in client.search_experiments()])) == (
        runs_before
    )
    assert [str(v.version) for v in client.search_model_versions("name='iris-classifier'")] == ["1"]


def test_without_labels_the_retrain_says_so(tmp_path):
    home = train_home(tmp_path / "home")
    env = {**home.env, "IRIS_LOOP_URI": f"sqlite:///{tmp_path / 'empty.sqlite'}"}
    proc = iris_train(env, "run", "--with-feedback", check=False)
    assert proc.returncode == 1 and "POST /feedback" in proc.stderr
