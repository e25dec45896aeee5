"""Build tampered copies of a real MLflow model folder (for security tests)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml


def tamper(model_dir: Path, out: Path, *, whitelist: bool = True) -> Path:
    """Copy ``model_dir`` to ``out`` with a model.skops that would run ``os.system``.

    With ``whitelist`` the MLmodel file also lists the dangerous type as trusted, as an
    attacker who can write the artifact would do; MLflow's own loader would then accept it.
    """
    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    shutil.copytree(model_dir, out)
    evil = make_pipeline(FunctionTransformer(os.system))
    skops.io.dump(evil, out / "model.skops")
    if whitelist:
        mlmodel = yaml.safe_load((out / "MLmodel").read_text())
        types = skops.io.get_untrusted_types(file=out / "model.skops")
        mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = sorted(set(types))
        (out / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return out


def truncate(model_dir: Path, out: Path) -> Path:
    """Copy with a model.skops cut in half (a corrupt download or disk)."""
    shutil.copytree(model_dir, out)
    data = (out / "model.skops").read_bytes()
    (out / "model.skops").write_bytes(data[: len(data) // 2])
    return out


def register_tampered(tracking_uri: str, source_version: str, work: Path, name: str) -> str:
    """Register a tampered copy of ``iris-classifier`` ``source_version`` as ``name``.

    As an attacker with write access to the registry would: a new run logs the evil folder
    and registers it. Its artifacts stay under ``work`` (never the project's ./mlruns).

    Returns:
        The new registry version.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    source = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/iris-classifier/{source_version}", dst_path=str(work / "genuine")
        )
    )
    bad = tamper(source, work / "evil")  # keeps the genuine onnx/ beside the evil skops
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("attacker")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("attacker", artifact_location=(work / "art").as_uri())
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(bad), "model")
    return mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
