"""The whole pipeline as one function: validate → split → train → register → gate → import."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from training import bento_store, data, feedback_data, registry, train
from training.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """What one training invocation produced; serialised into retrain job records."""

    parent_run_id: str = ""
    best_run_id: str = ""
    best_candidate: str = ""
    version: str = ""
    promoted: bool = False
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    bento_tag: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def preprocess(settings: Settings, raw_path: Path | None = None) -> data.Split:
    """Validate the raw CSV and publish the train/test pair. Nothing is written on failure."""
    source = raw_path or settings.raw_data
    frame = data.load_raw(source)
    result = data.split(frame, source=source, seed=settings.seed, test_size=settings.test_size)
    data.write_split(result, settings.processed_dir, seed=settings.seed)
    return result


def train_and_register(
    split: data.Split, settings: Settings, *, import_to_bento: bool = False
) -> PipelineResult:
    """Train candidates, register the best, and gate its promotion.

    With ``import_to_bento``, a promoted version is in the BentoML store before the
    ``champion`` alias moves to it.
    """
    experiment_id = registry.configure(settings)
    parent_run_id, candidates = train.train_candidates(split, settings)
    best_id = registry.select_best(parent_run_id, experiment_id, settings)
    best = next(c for c in candidates if c.run_id == best_id)
    version = registry.register(best, settings)
    imported: list[str] = []

    def import_before_promotion(candidate: str) -> None:
        bento_store.import_champion(settings, candidate)
        imported.append(candidate)

    try:
        decision = registry.gate(
            version,
            best.run_id,
            split.test,
            settings,
            before_promotion=import_before_promotion if import_to_bento else None,
        )
    except Exception:
        if imported:  # the store's latest must not stay a version that never became champion
            _restore_store(settings)
        raise
    return PipelineResult(
        parent_run_id=parent_run_id,
        best_run_id=best.run_id,
        best_candidate=best.name,
        version=version,
        promoted=decision.promoted,
        reason=decision.reason,
        metrics=best.metrics,
        candidates={c.name: c.metrics for c in candidates},
    )


def run(
    settings: Settings,
    raw_path: Path | None = None,
    *,
    import_to_bento: bool = True,
    with_feedback: bool = False,
) -> PipelineResult:
    """Run every stage; the champion (new or unchanged) ends up in the BentoML store.

    With ``with_feedback``, the labelled captures (training.feedback_data) are added to
    the raw CSV first, and both sources' digests are recorded on the run.
    """
    source = raw_path or settings.raw_data
    lineage: dict[str, str] = {}
    if with_feedback:
        combined = feedback_data.combine(settings, source, settings.home / "var" / "retrain-data")
        logger.info(
            "Training on %s (%d rows) plus %d labelled predictions",
            source.name,
            combined.base_rows,
            combined.feedback_rows,
        )
        source, lineage = combined.path, combined.lineage
    logger.info("Pipeline start: data=%s registry=%s", source, _safe_uri(settings))
    split = preprocess(settings, source)
    if lineage:
        split = replace(split, lineage=lineage)
    result = train_and_register(split, settings, import_to_bento=import_to_bento)
    if import_to_bento:
        result.bento_tag = bento_store.import_champion(settings).tag
    logger.info(
        "Pipeline done: version %s %s (%s)",
        result.version,
        "promoted to champion" if result.promoted else "kept as challenger",
        result.reason,
    )
    return result


def _restore_store(settings: Settings) -> None:
    """Make the registry's champion the BentoML store's latest again, as far as possible."""
    try:
        bento_store.import_champion(settings)
    except Exception:
        logger.exception("Could not put the champion back as the BentoML store's latest")


def _safe_uri(settings: Settings) -> str:
    """Tracking URI without credentials, for logs."""
    uri = settings.tracking_uri
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
