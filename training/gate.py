"""Decide from evidence whether a candidate replaces the champion.

Both models are scored on the **same held-out rows**: the test split of the run that trained
the candidate (labelled captures, when a retrain uses them, are inside that split already).
The evidence is the per-row accuracy difference, candidate minus champion, with a **paired
bootstrap** interval: the same resampled rows for both models, ``RESAMPLES`` resamples
seeded from ``IRIS_SEED``, a 95 % percentile interval.

The rule, checked by MLflow's own threshold API (``mlflow.validate_evaluation_results``
with ``MetricThreshold``), promotes only when both hold:

1. **Better where it matters, beyond chance**: on the rows where the two disagree, the
   candidate is right significantly more often than the champion: an exact one-sided sign
   (McNemar) test of wins against losses, ``p < SIGNIFICANCE`` (0.05;
   ``MetricThreshold(threshold=0.05, greater_is_better=False)`` on
   ``improvement_p_value``), and its accuracy is at least one row above the champion's
   (``MetricThreshold(min_absolute_change=0.5/n)`` on ``accuracy_score``). Accuracy is what
   the service is judged by live (``iris_live_accuracy``). One flower cannot flip the
   verdict: 1 win and 0 losses is p = 0.5; it takes 5 wins and no loss (p = 0.031). An
   identical retrain (same data, same seed, same predictions) has no disagreement at all
   (p = 1) and is **not** promoted.
2. **Not worse by more than the margin**: the lower bound of the interval is at least
   ``-IRIS_PROMOTION_MARGIN`` (default 0.02): ``MetricThreshold(threshold=-margin)`` on the
   candidate's ``accuracy_diff_ci_low``. A candidate that fixes a few rows but breaks almost
   as many is churn within the noise, not an improvement.

``mlflow.models.evaluate`` (static predictions in a DataFrame, no model loading, no SHAP)
computes and logs both models' metrics on the candidate's run, with the prefixes
``promotion_candidate_`` and ``promotion_champion_``. The interval is not an MLflow metric:
it is computed here with numpy and handed to the validation as one more candidate metric.

Caveat: when the data changed since the champion was trained, some of these test rows may
have been in the champion's training rows. That favours the champion, so the gate errs on
the side of keeping it.

A little over 250 lines: most of it is this rule's explanation and the evidence record;
the decision itself is :func:`decide`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.schema import FEATURES, SPECIES, TARGET

logger = logging.getLogger(__name__)

RESAMPLES = 2000
CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
METHOD = (
    f"exact sign test on disagreeing rows (p < {SIGNIFICANCE:g}) and paired bootstrap of the"
    f" accuracy difference ({RESAMPLES} resamples, 95% CI)"
)
CANDIDATE_PREFIX = "promotion_candidate_"
CHAMPION_PREFIX = "promotion_champion_"


@dataclass(frozen=True)
class Evidence:
    """What the decision rests on; every number is recorded on the version and the run."""

    rows: int
    candidate_accuracy: float
    champion_accuracy: float
    diff: float
    """Observed accuracy difference on the rows, candidate minus champion."""
    ci_low: float
    ci_high: float
    margin: float
    wins: int = 0
    """Rows the candidate gets right and the champion wrong."""
    losses: int = 0
    """Rows the champion gets right and the candidate wrong."""
    p_value: float = 1.0
    """One-sided exact sign test: the chance of this many wins or more if neither is better."""
    resamples: int = RESAMPLES

    def tags(self) -> dict[str, str]:
        """Registry version tags (``promotion.*``)."""
        return {
            "promotion.method": METHOD,
            "promotion.rows": str(self.rows),
            "promotion.candidate_accuracy": f"{self.candidate_accuracy:.6f}",
            "promotion.champion_accuracy": f"{self.champion_accuracy:.6f}",
            "promotion.diff": f"{self.diff:.6f}",
            "promotion.diff_ci_low": f"{self.ci_low:.6f}",
            "promotion.diff_ci_high": f"{self.ci_high:.6f}",
            "promotion.margin": f"{self.margin:g}",
            "promotion.wins": str(self.wins),
            "promotion.losses": str(self.losses),
            "promotion.p_value": f"{self.p_value:.6f}",
        }

    def metrics(self) -> dict[str, float]:
        """Run metrics (``promotion_*``), beside those ``mlflow.models.evaluate`` logs."""
        return {
            "promotion_rows": float(self.rows),
            "promotion_diff": self.diff,
            "promotion_diff_ci_low": self.ci_low,
            "promotion_diff_ci_high": self.ci_high,
            "promotion_margin": self.margin,
            "promotion_wins": float(self.wins),
            "promotion_losses": float(self.losses),
            "promotion_p_value": self.p_value,
        }


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str
    evidence: Evidence


def paired_bootstrap(
    candidate_correct: np.ndarray,
    champion_correct: np.ndarray,
    *,
    seed: int,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """Observed accuracy difference and its percentile interval over resampled rows.

    Each resample draws ``n`` row indices with replacement and uses them for both models,
    so the interval reflects how often the two disagree, not each one's own spread.

    Args:
        candidate_correct: 1 where the candidate is right, 0 where it is wrong (n rows).
        champion_correct: The same for the champion, on the same rows in the same order.
        seed: Seeds the resampling (the run's ``IRIS_SEED``): the same evidence gives the
            same interval.
        resamples: Number of bootstrap resamples.
        confidence: Two-sided coverage of the interval.

    Returns:
        ``(difference, low, high)``.

    Raises:
        ValueError: the arrays differ in length or are empty.
    """
    cand = np.asarray(candidate_correct, dtype=np.int8)
    champ = np.asarray(champion_correct, dtype=np.int8)
    if cand.shape != champ.shape or cand.ndim != 1 or cand.size == 0:
        raise ValueError(f"need two equal, non-empty 1-d arrays, got {cand.shape}, {champ.shape}")
    diff = (cand - champ).astype(np.float64)
    n = diff.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large test sets
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact p-value of ``wins`` or more among ``wins + losses`` fair coin flips."""
    from math import comb

    n = wins + losses
    if n == 0:
        return 1.0
    return sum(comb(n, k) for k in range(wins, n + 1)) / 2**n


def decide(
    test: pd.DataFrame,
    candidate_pred: np.ndarray,
    champion_pred: np.ndarray,
    *,
    champion: str,
    margin: float,
    seed: int,
) -> Verdict:
    """Score both models on ``test`` and apply the rule (see the module docstring).

    Logs both models' evaluation metrics and the evidence to the active MLflow run.

    Args:
        test: The held-out rows (features and ``species``).
        candidate_pred: The candidate's species for each row of ``test``.
        champion_pred: The champion's species for the same rows.
        champion: The champion's version, for the reason.
        margin: ``IRIS_PROMOTION_MARGIN``.
        seed: Seeds the bootstrap.

    Returns:
        The verdict with its one-sentence reason and the evidence.
    """
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    started = time.monotonic()
    truth = test[TARGET].to_numpy()
    diff, low, high = paired_bootstrap(
        candidate_pred == truth, champion_pred == truth, seed=seed, resamples=RESAMPLES
    )
    cand_right, champ_right = candidate_pred == truth, champion_pred == truth
    wins = int((cand_right & ~champ_right).sum())
    losses = int((champ_right & ~cand_right).sum())
    p_value = sign_test(wins, losses)
    candidate = _evaluate(test, candidate_pred, CANDIDATE_PREFIX)
    baseline = _evaluate(test, champion_pred, CHAMPION_PREFIX)
    evidence = Evidence(
        rows=len(test),
        candidate_accuracy=candidate["accuracy_score"],
        champion_accuracy=baseline["accuracy_score"],
        diff=diff,
        ci_low=low,
        ci_high=high,
        margin=margin,
        wins=wins,
        losses=losses,
        p_value=p_value,
    )
    mlflow.log_metrics(evidence.metrics())
    thresholds = {
        "accuracy_score": MetricThreshold(
            min_absolute_change=0.5 / len(test), greater_is_better=True
        ),
        "accuracy_diff_ci_low": MetricThreshold(threshold=-float(margin), greater_is_better=True),
        "improvement_p_value": MetricThreshold(threshold=SIGNIFICANCE, greater_is_better=False),
    }
    try:
        with _quiet_mlflow():
            mlflow.validate_evaluation_results(
                thresholds,
                EvaluationResult(
                    {**candidate, "accuracy_diff_ci_low": low, "improvement_p_value": p_value}, {}
                ),
                # The champion against itself: difference 0, interval [0, 0]. MLflow reads
                # every thresholded metric from the baseline too, even when only compared
                # with a fixed threshold.
                EvaluationResult(
                    {**baseline, "accuracy_diff_ci_low": 0.0, "improvement_p_value": 1.0}, {}
                ),
            )
        promoted = True
    except ModelValidationFailedException as e:
        logger.debug("MLflow validation: %s", e)
        promoted = False
    mlflow.log_metric("promotion_promoted", float(promoted))
    logger.info("Gate evidence computed in %.2f s", time.monotonic() - started)  # see docs/loop.md
    return Verdict(promoted, reason(evidence, champion, promoted), evidence)


def reason(e: Evidence, champion: str, promoted: bool) -> str:
    """One readable sentence with the numbers."""
    facts = (
        f"accuracy {e.candidate_accuracy:.4f} vs champion v{champion}'s"
        f" {e.champion_accuracy:.4f} on the same {e.rows} test rows, difference {e.diff:+.4f}"
        f" (95% CI {e.ci_low:+.4f} to {e.ci_high:+.4f}, margin {e.margin:g});"
        f" {e.wins} rows won, {e.losses} lost (sign test p={e.p_value:.3f})"
    )
    if promoted:
        return f"promoted, better than champion v{champion}: {facts}"
    if e.diff > 0:
        return f"not promoted, the gain is within the noise: {facts}"
    if e.diff == 0 and e.ci_low == e.ci_high == 0:
        return f"not promoted, no improvement (same answers on every test row): {facts}"
    if e.diff == 0:
        return f"not promoted, no improvement: {facts}"
    return f"not promoted, worse than champion v{champion}: {facts}"


def _evaluate(test: pd.DataFrame, predictions: np.ndarray, prefix: str) -> dict[str, float]:
    """``mlflow.models.evaluate`` on static predictions; metrics without the prefix."""
    import mlflow

    data = test[[*FEATURES, TARGET]].assign(prediction=predictions)
    with _quiet_mlflow():
        result = mlflow.models.evaluate(
            data=data,
            targets=TARGET,
            predictions="prediction",
            model_type="classifier",
            evaluator_config={
                "log_model_explainability": False,
                "metric_prefix": prefix,
                "label_list": list(SPECIES),
                "average": "macro",
                "log_metrics_with_dataset_info": False,
            },
        )
    return {k.removeprefix(prefix): float(v) for k, v in result.metrics.items()}


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's evaluation logs a line per step at INFO: keep warnings and errors only."""
    from sklearn.exceptions import UndefinedMetricWarning

    names = ("mlflow.models.evaluation", "mlflow.data", "mlflow.types")
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
            # A weak model may never answer one species: its precision is 0, as it should be.
            warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
            yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)
