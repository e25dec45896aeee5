"""The promotion rule on crafted predictions: the bootstrap, MLflow's thresholds, the reason.

No model is trained here: the candidate's and the champion's answers are written down, so
each case is exactly the situation it names. ``decide`` runs MLflow's real evaluation and
threshold API against a SQLite tracking store in ``tmp_path``. The same rule on real
registered models is in tests/training/test_promotion.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from harness.cli import RAW_CSV
from training import gate
from training.data import load_raw
from training.schema import SPECIES, TARGET

MARGIN = 0.02


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Real flowers: 30 of each species from the shipped data (90 rows)."""
    frame = load_raw(RAW_CSV)
    return frame.groupby(TARGET).head(30).reset_index(drop=True)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite tracking store of this module's own; the process-wide URI is restored."""
    import mlflow

    saved = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path_factory.mktemp('gate') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("gate")
    yield uri
    mlflow.set_tracking_uri(saved)


def wrong(truth: np.ndarray, indices: list[int]) -> np.ndarray:
    """``truth`` with the rows at ``indices`` answered with the next species."""
    answers = truth.copy()
    for i in indices:
        answers[i] = SPECIES[(SPECIES.index(truth[i]) + 1) % len(SPECIES)]
    return answers


def decide(
    rows: pd.DataFrame, candidate: np.ndarray, champion: np.ndarray, margin: float = MARGIN
) -> gate.Verdict:
    import mlflow

    with mlflow.start_run():
        return gate.decide(rows, candidate, champion, champion="7", margin=margin, seed=1)


def test_identical_answers_are_no_improvement(rows, tracking):
    truth = rows[TARGET].to_numpy()
    same = wrong(truth, [3, 40, 70])
    verdict = decide(rows, same, same.copy())

    assert verdict.promoted is False
    e = verdict.evidence
    assert (e.diff, e.ci_low, e.ci_high) == (0.0, 0.0, 0.0)
    assert e.candidate_accuracy == e.champion_accuracy == pytest.approx(87 / 90)
    assert verdict.reason.startswith("not promoted, no improvement (same answers on every")


def test_clearly_better_candidate_is_promoted(rows, tracking):
    truth = rows[TARGET].to_numpy()
    verdict = decide(rows, wrong(truth, [5]), wrong(truth, list(range(30, 60))))

    assert verdict.promoted is True
    e = verdict.evidence
    assert e.diff == pytest.approx(29 / 90)
    assert 0 < e.ci_low < e.diff < e.ci_high
    assert (e.wins, e.losses) == (30, 1) and e.p_value < 1e-7
    assert verdict.reason == (
        "promoted, better than champion v7: accuracy 0.9889 vs champion v7's 0.6667 on the"
        f" same 90 test rows, difference +0.3222 (95% CI {e.ci_low:+.4f} to {e.ci_high:+.4f},"
        f" margin 0.02); 30 rows won, 1 lost (sign test p={e.p_value:.3f})"
    )


def test_slightly_worse_within_the_margin_is_not_promoted(rows, tracking):
    """One flower in 90 lost, with a 5-point margin: the interval (about -3/90 to 0) stays
    within the margin, but nothing improved."""
    truth = rows[TARGET].to_numpy()
    verdict = decide(rows, wrong(truth, [10, 50]), wrong(truth, [10]), margin=0.05)

    assert verdict.promoted is False
    e = verdict.evidence
    assert e.diff == pytest.approx(-1 / 90)
    assert -0.05 <= e.ci_low < e.diff  # not worse by more than the margin...
    assert verdict.reason.startswith("not promoted, worse than champion v7")  # ...nor better


def test_a_gain_inside_the_noise_is_not_promoted(rows, tracking):
    """Three flowers fixed, two broken: better on these rows by one, but the interval
    reaches below the margin: churn, not evidence."""
    truth = rows[TARGET].to_numpy()
    verdict = decide(rows, wrong(truth, [1, 2]), wrong(truth, [60, 61, 62]))

    assert verdict.promoted is False
    e = verdict.evidence
    assert e.diff == pytest.approx(1 / 90)
    assert e.ci_low < -MARGIN
    assert verdict.reason.startswith("not promoted, the gain is within the noise")


def test_one_flower_cannot_flip_the_verdict(rows, tracking):
    """One more flower right and nothing broken is chance (p = 0.5), not evidence."""
    truth = rows[TARGET].to_numpy()
    verdict = decide(rows, truth.copy(), wrong(truth, [20]))

    assert verdict.promoted is False
    e = verdict.evidence
    assert e.diff == pytest.approx(1 / 90) and (e.wins, e.losses) == (1, 0)
    assert e.p_value == 0.5
    assert verdict.reason.startswith("not promoted, the gain is within the noise")


@pytest.mark.parametrize(("fixed", "promoted"), [(4, False), (5, True)])
def test_it_takes_five_flowers_fixed_and_none_broken(rows, tracking, fixed, promoted):
    truth = rows[TARGET].to_numpy()
    verdict = decide(rows, truth.copy(), wrong(truth, list(range(fixed))))

    assert verdict.promoted is promoted
    assert verdict.evidence.p_value == pytest.approx(0.5**fixed)


def test_sign_test_is_exact():
    assert gate.sign_test(0, 0) == 1.0
    assert gate.sign_test(1, 0) == 0.5
    assert gate.sign_test(5, 0) == pytest.approx(1 / 32)
    assert gate.sign_test(3, 2) == pytest.approx(16 / 32)
    assert gate.sign_test(0, 3) == 1.0


def test_evaluation_and_evidence_are_logged_on_the_active_run(rows, tracking):
    import mlflow

    truth = rows[TARGET].to_numpy()
    with mlflow.start_run() as run:
        verdict = gate.decide(
            rows, truth.copy(), wrong(truth, list(range(6))), champion="1", margin=MARGIN, seed=1
        )
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    e = verdict.evidence

    assert metrics["promotion_candidate_accuracy_score"] == 1.0
    assert metrics["promotion_champion_accuracy_score"] == pytest.approx(84 / 90)
    assert metrics["promotion_candidate_example_count"] == 90
    assert {k: metrics[k] for k in e.metrics()} == pytest.approx(e.metrics())
    assert metrics["promotion_promoted"] == 1.0
    tags = e.tags()
    assert tags["promotion.rows"] == "90" and tags["promotion.margin"] == "0.02"
    assert (tags["promotion.wins"], tags["promotion.losses"]) == ("6", "0")
    assert float(tags["promotion.diff_ci_low"]) == pytest.approx(e.ci_low, abs=1e-6)


def test_bootstrap_is_paired_seeded_and_checks_its_input():
    cand = np.array([1] * 28 + [0, 1])
    champ = np.array([1] * 28 + [1, 0])  # each wrong once, on different rows

    diff, low, high = gate.paired_bootstrap(cand, champ, seed=1)
    assert diff == 0.0 and low < 0 < high  # disagreement: an interval around zero
    assert gate.paired_bootstrap(cand, champ, seed=1) == (diff, low, high)  # seeded
    assert gate.paired_bootstrap(cand, cand, seed=1) == (0.0, 0.0, 0.0)
    # Large test sets are resampled in chunks (bounded memory).
    many = np.tile(cand, 5000)
    d, lo, hi = gate.paired_bootstrap(many, np.tile(champ, 5000), seed=2, resamples=300)
    assert d == 0.0 and -0.01 < lo < 0 < hi < 0.01
    with pytest.raises(ValueError, match="equal, non-empty"):
        gate.paired_bootstrap(cand, champ[:-1], seed=1)
    with pytest.raises(ValueError, match="equal, non-empty"):
        gate.paired_bootstrap(np.array([]), np.array([]), seed=1)


def test_margin_is_a_setting_and_cannot_be_negative(monkeypatch):
    from pydantic import ValidationError

    from training.settings import Settings

    assert Settings().promotion_margin == MARGIN
    monkeypatch.setenv("IRIS_PROMOTION_MARGIN", "0.05")
    assert Settings().promotion_margin == 0.05
    monkeypatch.setenv("IRIS_PROMOTION_MARGIN", "-0.01")
    with pytest.raises(ValidationError, match="promotion_margin"):
        Settings()
