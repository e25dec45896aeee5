"""Select the best run, register it, gate promotion with aliases, and promote explicitly.

What the gate decides on is training.gate; here it is applied to the registry."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training import gate as gate_rule
from training.aliases import (
    alias_version,
    canary_version,
    champion_version,
    registry_client,
    set_alias,
)
from training.model_io import load_classifier
from training.schema import CANARY_TAG, CHALLENGER, CHAMPION, FEATURES
from training.settings import Settings
from training.train import PRIORITY_TAG, CandidateResult

logger = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A registry operation could not be carried out; the message says why."""


@dataclass(frozen=True)
class Decision:
    version: str
    promoted: bool
    reason: str

    @property
    def alias(self) -> str:
        return CHAMPION if self.promoted else CHALLENGER


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store and return the experiment id (created if new)."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        # A remote server picks its own artifact location; a local store keeps artifacts in
        # the project's mlruns/ rather than wherever the process happens to run.
        remote = settings.tracking_uri.startswith(("http://", "https://"))
        location = None if remote else settings.artifact_root
        experiment_id = mlflow.create_experiment(
            settings.experiment_name, artifact_location=location
        )
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def select_best(parent_run_id: str, experiment_id: str, settings: Settings) -> str:
    """Best child run of ``parent_run_id`` by the selection metric, with MLflow's own query.

    Ties go to the lowest ``candidate_priority`` tag (the Random Forest).
    """
    from mlflow import MlflowClient

    direction = "DESC" if settings.higher_is_better else "ASC"
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=[f"metrics.{settings.selection_metric} {direction}", f"tags.{PRIORITY_TAG} ASC"],
        max_results=10,
    )
    if not runs:
        raise RegistryError(f"no candidate runs under parent run {parent_run_id}")
    best = runs[0]
    logger.info(
        "Selected run %s (%s) by %s=%.4f",
        best.info.run_id,
        best.info.run_name,
        settings.selection_metric,
        best.data.metrics[settings.selection_metric],
    )
    return best.info.run_id


def register(best: CandidateResult, settings: Settings) -> str:
    """Register the candidate's model as a new version of ``settings.model_name``."""
    import mlflow

    tags = {"run_id": best.run_id, "candidate": best.name}
    tags.update({f"metric.{k}": f"{v:.6f}" for k, v in best.metrics.items()})
    version = mlflow.register_model(best.model_uri, settings.model_name, tags=tags)
    logger.info(
        "Registered %s version %s from run %s", settings.model_name, version.version, best.run_id
    )
    return str(version.version)


def predict_version(version: str, test: pd.DataFrame, settings: Settings) -> np.ndarray:
    """A registered version's species for each row of ``test`` (loaded with our safe loader)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.model_name}/{version}", dst_path=tmp
        )
        model = load_classifier(Path(path))
    proba = model.predict_proba(test[list(FEATURES)])
    return np.asarray(model.class_names)[proba.argmax(axis=1)]


def gate(
    version: str,
    run_id: str,
    test: pd.DataFrame,
    settings: Settings,
    before_promotion: Callable[[str], object] | None = None,
) -> Decision:
    """Make ``version`` champion only if the evidence says it is better (training.gate).

    Candidate and champion are scored on the same test rows; the evidence is logged on the
    candidate's run ``run_id`` and written as ``promotion.*`` tags on the version. Otherwise
    the version becomes ``challenger``. The alias moves last: a failure before it (registry
    down, a model that cannot be loaded) leaves the champion where it was.

    ``before_promotion(version)`` runs just before the alias moves to a promoted version
    (the pipeline imports it into the BentoML store there, so this server's workers find
    it locally the moment they see the alias move, instead of downloading it). If the
    champion moved meanwhile, the version is not promoted after all, and the caller puts
    the champion back (``training.pipeline.run`` imports the champion as its last step).
    """
    import mlflow

    current = champion_version(settings)
    if current is None:
        decision = Decision(version, True, "no champion yet")
        evidence = {"promotion.method": "first version"}
    else:
        started = time.monotonic()
        candidate_pred = predict_version(version, test, settings)
        champion_pred = predict_version(current, test, settings)
        with mlflow.start_run(run_id=run_id):
            verdict = gate_rule.decide(
                test,
                candidate_pred,
                champion_pred,
                champion=current,
                margin=settings.promotion_margin,
                seed=settings.seed,
            )
        decision, evidence = (
            Decision(version, verdict.promoted, verdict.reason),
            verdict.evidence.tags(),
        )
        logger.info("Gate took %.2f s (both models loaded and scored)", time.monotonic() - started)
    if decision.promoted and before_promotion is not None:
        before_promotion(version)  # seconds of work: the champion is read again after it
    if decision.promoted and (now := champion_version(settings)) != current:
        # Another retrain moved the champion while this one was scored or imported: this
        # evidence is about a model that no longer answers, so the candidate waits as
        # challenger. (What remains is the moment between this read and the alias write:
        # the registry has no compare-and-set; _apply's set_alias covers a first champion.)
        compared = f"compared with v{current}" if current else "found no champion"
        why = decision.reason.removeprefix("promoted, ")
        moved = f"not promoted, the champion moved to v{now} while this gate {compared} ({why})"
        decision = Decision(version, False, moved)
        if current is not None:  # a first version's run has no gate metrics
            mlflow.MlflowClient().log_metric(run_id, "promotion_promoted", 0.0)
    return _apply(decision, settings, previous=current, evidence=evidence, rival_wins=True)


def _apply(
    decision: Decision,
    settings: Settings,
    previous: str | None,
    evidence: dict[str, str] | None = None,
    *,
    rival_wins: bool,
) -> Decision:
    """Tag the version with the decision (and its evidence), then move the alias: last.

    Returns the decision carried out: with ``rival_wins`` (a gate's decision), a first
    champion set by another retrain at the same moment stands (this version was never
    compared with it), and this one waits as challenger.
    """
    client = registry_client(settings)
    name = settings.model_name
    tags = {
        **(evidence or {}),
        "promotion.decision": decision.alias,
        "promotion.reason": decision.reason,
        "promotion.previous_champion": previous or "",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, decision.version, key, value)
    keep = rival_wins and decision.promoted
    now = set_alias(settings, decision.alias, decision.version, rival_wins=keep)
    if now != decision.version:
        lost = f"not promoted, v{now} became champion at the same moment ({decision.reason})"
        decision = Decision(decision.version, False, lost)
        client.set_model_version_tag(name, decision.version, "promotion.decision", CHALLENGER)
        client.set_model_version_tag(name, decision.version, "promotion.reason", lost)
        client.set_model_version_tag(name, decision.version, "promotion.previous_champion", now)
        set_alias(settings, CHALLENGER, decision.version)
    logger.info("Version %s -> %s: %s", decision.version, decision.alias, decision.reason)
    return decision


def promote(version: str, settings: Settings) -> Decision:
    """Move ``champion`` to ``version`` explicitly (promotion or rollback); ``challenger``
    leaves it, and a canary on it ends, if they pointed there. Promoting the champion again
    changes no version tag (its ``promotion.previous_champion``, the way back, stays), so a
    promotion that failed half-way can simply be run again.

    Raises:
        RegistryError: the version does not exist.
        MlflowException: the registry failed (an outage is never reported as "no version").
    """
    from mlflow.exceptions import MlflowException

    client = registry_client(settings)
    try:
        client.get_model_version(settings.model_name, version)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise RegistryError(f"{settings.model_name} has no version {version!r}") from None
    previous = champion_version(settings)
    if previous == version:
        decision = Decision(version, True, "already champion: its tags are unchanged")
    else:
        was = f"previous champion: v{previous}" if previous else "no previous champion"
        decision = Decision(version, True, f"manual promotion ({was})")
        _apply(decision, settings, previous=previous, rival_wins=False)  # as the operator says
    # A canary on this version is over (its challenger is champion): first, so a retry after
    # a failure here still finds the challenger to promote.
    if canary_version(settings) == version:
        client.delete_registered_model_tag(settings.model_name, CANARY_TAG)
    if alias_version(settings, CHALLENGER) == version:
        client.delete_registered_model_alias(settings.model_name, CHALLENGER)
    return decision
