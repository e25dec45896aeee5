"""Save and load models safely: skops with an explicit, minimal trusted-type list, never pickle.

MLflow's own loader trusts whatever type list the model's MLmodel file declares, so a
tampered artifact could whitelist anything. Everything in this product loads models
through :func:`load_classifier`, which uses the list below and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

logger = logging.getLogger(__name__)

TRUSTED_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree",)
"""Types beyond skops' defaults that our models contain (the Random Forest's trees)."""

MODEL_FILE = "model.skops"


class ModelLoadError(RuntimeError):
    """A model folder could not be loaded safely; the message says why."""


@dataclass(frozen=True)
class LoadedClassifier:
    """A fitted scikit-learn classifier plus the names of the classes it predicts."""

    estimator: object
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(features)


def load_classifier(model_dir: Path) -> LoadedClassifier:
    """Load an MLflow sklearn model folder with skops and our trusted-type list.

    Args:
        model_dir: Folder holding ``MLmodel`` and ``model.skops``.

    Returns:
        The classifier with class and feature names from the model's metadata.

    Raises:
        ModelLoadError: missing files, a non-skops format, untrusted types, or metadata
            that does not match the estimator.
    """
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    mlmodel = _read_mlmodel(model_dir)
    flavor = mlmodel.get("flavors", {}).get("sklearn", {})
    if flavor.get("serialization_format") != "skops":
        raise ModelLoadError(
            f"{model_dir}: refusing serialization format {flavor.get('serialization_format')!r};"
            " only skops models are loaded"
        )
    path = model_dir / flavor.get("pickled_model", MODEL_FILE)
    try:
        estimator = skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as e:
        raise ModelLoadError(f"{path}: model contains untrusted types: {e}") from None
    except Exception as e:  # noqa: BLE001 - corrupt zip, truncated file, bad schema...
        raise ModelLoadError(f"{path}: not a valid skops model ({type(e).__name__}: {e})") from None
    metadata = mlmodel.get("metadata") or {}
    classes = tuple(metadata.get("class_names") or ())
    features = tuple(metadata.get("feature_names") or ())
    n_classes = len(getattr(estimator, "classes_", ()))
    if not hasattr(estimator, "predict_proba") or not classes or n_classes != len(classes):
        raise ModelLoadError(
            f"{model_dir}: estimator and metadata disagree ({n_classes} classes,"
            f" class_names={list(classes)})"
        )
    return LoadedClassifier(estimator, classes, features)


def read_class_names(model_dir: Path) -> tuple[str, ...]:
    """The class names recorded in the model's metadata, without loading the model."""
    classes = tuple((_read_mlmodel(model_dir).get("metadata") or {}).get("class_names") or ())
    if not classes:
        raise ModelLoadError(f"{model_dir}/MLmodel: no class_names in metadata")
    return classes


def _read_mlmodel(model_dir: Path) -> dict:
    try:
        return yaml.safe_load((model_dir / "MLmodel").read_text()) or {}
    except FileNotFoundError:
        raise ModelLoadError(f"{model_dir}: no MLmodel file") from None
    except yaml.YAMLError as e:
        raise ModelLoadError(f"{model_dir}/MLmodel: invalid YAML ({e})") from None
