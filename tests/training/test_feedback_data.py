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
from training.schema import FEATURES

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
        "tags.`data.feedback_rows` = '1'",
    )
    assert run, "no run records the feedback rows"
    tags = run[0].data.tags
    assert tags["data.base_source"] == RAW_CSV.name
    assert len(tags["data.base_sha256_16"]) == len(tags["data.feedback_sha256_16"]) == 16
    # One flower labelled six times joins once; the setosa, four times, is already a row of
    # the shipped CSV (line 9) with that label: repeats would sit on both sides of the split
    # and win the gate on every test copy.
    assert tags["data.feedback_repeats_dropped"] == "9"
    train = pd.read_csv(home.settings.train_csv)
    test = pd.read_csv(home.settings.test_csv)
    assert len(train) + len(test) == 150 + 1
    both = pd.concat([train, test])
    flower = both[list(FEATURES)].to_numpy().tolist()
    relabelled = [
        f == [6.0, 2.9, 4.5, 1.5] and s == "Iris-virginica"
        for f, s in zip(flower, both["species"], strict=True)
    ]
    assert sum(relabelled) == 1


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


def test_the_base_csv_is_read_as_a_plain_run_reads_it(tmp_path):
    """A base CSV saved by a spreadsheet (byte-order mark, spaces after commas, columns
    reordered) is accepted by a plain run, so by a retrain with feedback too."""
    from training.data import load_raw
    from training.feedback_data import combine
    from training.settings import Settings

    loop = f"sqlite:///{tmp_path / 'loop.sqlite'}"
    serve_and_label(
        FeedbackStore(loop), [([6.0, 2.9, 4.5, 1.5], "Iris-versicolor", "Iris-virginica")]
    )
    frame = pd.read_csv(RAW_CSV)
    reordered = frame[["Species", *frame.columns[:-1]]].to_csv(index=False)
    base = tmp_path / "spreadsheet.csv"
    base.write_text("\ufeff" + reordered.replace(",", ", "), encoding="utf-8")
    assert len(load_raw(base)) == 150
    combined = combine(Settings(home=tmp_path, loop_uri=loop), base, tmp_path / "out")
    assert (combined.base_rows, combined.feedback_rows) == (150, 1)
    both = load_raw(combined.path)
    assert len(both) == 151 and both.iloc[-1]["species"] == "Iris-virginica"


def test_labels_that_only_repeat_the_base_are_nothing_to_train_on(tmp_path):
    from training.feedback_data import combine
    from training.settings import Settings

    loop = f"sqlite:///{tmp_path / 'loop.sqlite'}"
    serve_and_label(  # line 9 of the shipped CSV, with its own label, twice
        FeedbackStore(loop), [([5.0, 3.4, 1.5, 0.2], "Iris-setosa", "Iris-setosa")] * 2
    )
    with pytest.raises(ValueError, match=r"all 2 labelled predictions repeat flowers Iris\.csv"):
        combine(Settings(home=tmp_path, loop_uri=loop), RAW_CSV, tmp_path / "out")
