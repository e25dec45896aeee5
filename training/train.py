"""Train the candidate models, each in its own MLflow run under one parent run."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import LabelEncoder, StandardScaler

from training import onnx_export, reference_profile
from training.data import Split
from training.model_io import TRUSTED_TYPES
from training.schema import FEATURES, SPECIES, TARGET
from training.settings import PROJECT_DIR, Settings

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
PRIORITY_TAG = "candidate_priority"
"""Lower wins ties on the selection metric: the Random Forest is the seed's default."""


def _logistic_regression(seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def _random_forest(seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=100, random_state=seed)


CANDIDATES: dict[str, tuple[int, Callable[[int], ClassifierMixin]]] = {
    "random_forest": (0, _random_forest),
    "logistic_regression": (1, _logistic_regression),
}


@dataclass(frozen=True)
class CandidateResult:
    name: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]


def evaluate(
    model: ClassifierMixin, features: pd.DataFrame, labels: np.ndarray
) -> dict[str, float]:
    """Held-out metrics for a fitted classifier on encoded labels."""
    predicted = model.predict(features)
    proba = model.predict_proba(features)
    return {
        "test_accuracy": float(accuracy_score(labels, predicted)),
        "test_f1_macro": float(f1_score(labels, predicted, average="macro")),
        "test_log_loss": float(log_loss(labels, proba, labels=list(range(len(SPECIES))))),
    }


def git_commit() -> str | None:
    """The checkout's commit, or None outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def pip_requirements() -> list[str]:
    """Exactly what loading the model needs, pinned to what trained it."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("scikit-learn", "skops", "numpy", "scipy")]


def train_candidates(data: Split, settings: Settings) -> tuple[str, list[CandidateResult]]:
    """Fit every candidate in a child run of a new parent run.

    Returns:
        The parent run id and one result per candidate.
    """
    import mlflow

    encoder = LabelEncoder().fit(list(SPECIES))
    class_names = [str(c) for c in encoder.classes_]
    x_train, x_test = data.train[list(FEATURES)], data.test[list(FEATURES)]
    y_train, y_test = encoder.transform(data.train[TARGET]), encoder.transform(data.test[TARGET])
    mlflow.sklearn.autolog(log_models=False, log_datasets=False, silent=True)
    # autolog's training metrics still call log_loss(y_pred=...), renamed in scikit-learn 1.9.
    warnings.filterwarnings("ignore", message=".*y_pred.* was renamed", category=FutureWarning)
    # MLflow 3.17 registers its local artifact source twice and then warns that a local
    # path is ambiguous between the two identical classes.
    warnings.filterwarnings(
        "ignore", message=".*interpreted in multiple ways", category=UserWarning
    )
    commit = git_commit()
    tags = {"mlflow.source.git.commit": commit} if commit else {}
    results = []
    with mlflow.start_run(run_name="training", tags=tags) as parent:
        mlflow.log_params({"seed": settings.seed, "test_size": settings.test_size})
        mlflow.set_tag("data_sha256_16", data.digest)
        if data.lineage:
            mlflow.set_tags(data.lineage)
        for name, (priority, build) in CANDIDATES.items():
            with mlflow.start_run(
                run_name=name, nested=True, tags={**tags, PRIORITY_TAG: str(priority)}
            ) as run:
                model = build(settings.seed).fit(x_train, y_train)
                metrics = evaluate(model, x_test, y_test)
                model_uri = _log_run(model, metrics, data, class_names, x_test, y_test)
                results.append(CandidateResult(name, run.info.run_id, model_uri, metrics))
                logger.info("Trained %s (run %s): %s", name, run.info.run_id, _fmt(metrics))
    return parent.info.run_id, results


def _log_run(
    model: ClassifierMixin,
    metrics: dict[str, float],
    data: Split,
    class_names: list[str],
    x_test: pd.DataFrame,
    y_test: np.ndarray,
) -> str:
    import mlflow
    from mlflow.models import infer_signature

    mlflow.log_metrics(metrics)
    for frame, context in ((data.train, "training"), (data.test, "testing")):
        dataset = mlflow.data.from_pandas(
            frame, source=data.source.resolve().as_uri(), targets=TARGET, name=f"iris-{context}"
        )
        mlflow.log_input(dataset, context=context)
    matrix = confusion_matrix(y_test, model.predict(x_test), labels=list(range(len(SPECIES))))
    mlflow.log_dict({"labels": class_names, "matrix": matrix.tolist()}, "confusion_matrix.json")
    mlflow.log_figure(_confusion_figure(matrix, class_names), "confusion_matrix.png")
    with _own_model_loadable():
        info = mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            serialization_format="skops",
            skops_trusted_types=list(TRUSTED_TYPES),
            signature=infer_signature(x_test, model.predict(x_test)),
            input_example=x_test.head(2),
            pip_requirements=pip_requirements(),
            metadata={"class_names": class_names, "feature_names": list(FEATURES)},
        )
    _log_onnx_export(model, info.model_id, x_test)
    _log_reference_profile(info.model_id, data)
    return info.model_uri


def _log_reference_profile(model_id: str, data: Split) -> None:
    """Add ``reference/profile.json`` (the training data's profile) to the model's artifacts.

    The registry version and the BentoML model imported from it carry it, so a server can
    compare live inputs with the data its model learned from (training.reference_profile).
    """
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="iris-profile-") as tmp:
        reference_profile.write(reference_profile.build(data.train, data.digest), Path(tmp))
        MlflowClient().log_model_artifacts(
            model_id, str(Path(tmp) / reference_profile.PROFILE_DIR), reference_profile.PROFILE_DIR
        )


def _log_onnx_export(model: ClassifierMixin, model_id: str, x_test: pd.DataFrame) -> None:
    """Add ``onnx/`` (graph, parity record, report) to the logged model's own artifacts.

    Every registry version then carries the ONNX model serving will use, checked here
    against scikit-learn on the test set and the probes. If it cannot be exported the
    model is still logged; serving falls back to scikit-learn for it.
    """
    import mlflow
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="iris-onnx-") as tmp:
        exported = onnx_export.ensure(
            Path(tmp), model, len(FEATURES), extra_inputs=x_test.to_numpy()
        )
        if not exported:
            mlflow.set_tag("onnx_export", "failed")
            return
        report = onnx_export.read(Path(tmp)).report
        MlflowClient().log_model_artifacts(
            model_id, str(Path(tmp) / onnx_export.ONNX_DIR), onnx_export.ONNX_DIR
        )
        mlflow.set_tag("onnx_export", "ok")
        mlflow.log_metric("onnx_parity_max_abs_diff", report["parity_max_abs_diff"])


@contextlib.contextmanager
def _own_model_loadable() -> Iterator[None]:
    """Let MLflow load the model this process just fitted, to validate the input example.

    MLflow refuses to deserialize any model unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is
    true. We keep it off everywhere else: serving and the promotion gate load models with
    training.model_io and our own trusted-type list.
    """
    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    saved = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _confusion_figure(matrix: np.ndarray, labels: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center")
    fig.tight_layout()
    plt.close(fig)
    return fig


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
