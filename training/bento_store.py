"""Import the registry's champion into the BentoML model store, once per version."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training import onnx_export
from training.aliases import champion_version
from training.model_io import load_classifier
from training.registry import RegistryError
from training.schema import CHAMPION, store_tag
from training.settings import Settings

logger = logging.getLogger(__name__)

MLFLOW_SUBDIR = "mlflow_model"
"""Same layout as ``bentoml.mlflow.import_model``, so ``bentoml.mlflow.load_model`` works too."""


@dataclass(frozen=True)
class Imported:
    tag: str
    version: str
    created: bool


def import_champion(settings: Settings, version: str | None = None) -> Imported:
    """Copy a registered version (default: the champion) into the BentoML model store.

    Idempotent: a version already in the store is not copied again. If it is present but is
    not the store's ``latest`` (after a rollback), it is re-created so that ``latest`` -- what
    ``bentoml build`` packs -- is always the model just imported, still with one entry. An
    entry without a readable ONNX export (stored before exports existed, or damaged) is
    re-created too: workers never compile one, so it would be served by scikit-learn.

    Raises:
        RegistryError: there is no champion to import.
    """
    import bentoml
    from mlflow import MlflowClient

    version = version or champion_version(settings)
    if version is None:
        raise RegistryError(
            f"{settings.model_name} has no @{CHAMPION} to import; run training first"
        )
    mv = MlflowClient().get_model_version(settings.model_name, version)
    tag = bentoml.models.Tag(settings.bento_model_name, store_tag(version, mv.run_id))
    try:
        existing = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        existing = None
    if existing is not None and onnx_export.read_or_none(Path(existing.path_of(MLFLOW_SUBDIR))):
        latest = bentoml.models.get(f"{settings.bento_model_name}:latest")
        if latest.tag == existing.tag:
            logger.info("BentoML store already holds %s as latest; nothing to import", tag)
            return Imported(str(existing.tag), version, created=False)
    if existing is not None:  # not latest, or stored before exports existed: re-create it
        bentoml.models.delete(tag)
        logger.info("Re-creating %s (the store's latest, with a checked ONNX export)", tag)
    _create(tag, mv, settings)
    logger.info("Imported %s v%s into the BentoML store as %s", settings.model_name, version, tag)
    return Imported(str(tag), version, created=True)


def _create(tag, mv, settings: Settings) -> None:
    import bentoml
    import mlflow

    run = mlflow.get_run(mv.run_id)
    labels = {
        "registry_model": settings.model_name,
        "registry_version": str(mv.version),
        "run_id": mv.run_id,
        "candidate": run.info.run_name or "",
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / MLFLOW_SUBDIR
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.model_name}/{mv.version}", dst_path=str(src)
        )
        classifier = load_classifier(src)  # refuse to store anything we could not serve
        onnx_export.ensure(src, classifier.estimator, len(classifier.feature_names))
        metadata = {
            "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
            "class_names": list(classifier.class_names),
            "feature_names": list(classifier.feature_names),
            "source": mv.source,
        }
        with bentoml.models.create(
            tag,
            module="bentoml.mlflow",
            labels=labels,
            metadata=metadata,
            signatures={"predict": {"batchable": False}},
        ) as model:
            shutil.copytree(src, model.path_of(MLFLOW_SUBDIR))
