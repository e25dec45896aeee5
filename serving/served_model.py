"""The in-memory model that answers predictions, and how it is built and swapped.

A :class:`ServedModel` is immutable. Workers hold exactly one at a time in a
:class:`ModelHolder`; a request reads ``holder.current`` once and uses that object to the
end, so a reload (a plain reference assignment) can never mix two versions in one answer.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from training import onnx_export, reference_profile
from training.model_io import load_classifier, read_class_names
from training.onnx_model import BULK_ROWS, OnnxClassifier, served

logger = logging.getLogger(__name__)

__all__ = ["BULK_ROWS", "ModelHolder", "ModelIdentity", "ServedModel", "load_model_dir"]


class Predictor(Protocol):
    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered: shown in every response and in metrics."""

    name: str
    version: str
    alias: str
    run_id: str
    source: str  # "bento" (packed/store) or "registry" (hot reload)
    runtime: str = "sklearn"  # "onnx" or "sklearn"

    def public(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "runtime": self.runtime,
        }


@dataclass(frozen=True)
class ServedModel:
    identity: ModelIdentity
    class_names: tuple[str, ...]
    predictor: Predictor
    fast: bool  # True when a call is microseconds (safe on the event loop)
    profile: dict | None = None  # its training data's reference profile (drift), if any
    model_dir: Path | None = None  # the MLflow model folder it was loaded from

    def predict(self, features: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Species names and class probabilities (rows sum to 1) for an (n, 4) array."""
        proba, labels = served(self.predictor.predict_proba(features))
        names = self.class_names
        return [names[i] for i in labels], proba


class SklearnPredictor:
    """scikit-learn with the column names it was fitted with (no feature-name warnings)."""

    def __init__(self, estimator: object):
        self.estimator = estimator
        names = getattr(estimator, "feature_names_in_", None)
        self.columns = None if names is None else list(names)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if self.columns is not None:
            import pandas as pd

            x = pd.DataFrame(x, columns=self.columns)
        return self.estimator.predict_proba(x)


def load_exported(
    model_dir: Path, identity: ModelIdentity, *, threads: int | None = None
) -> ServedModel | None:
    """The model's ONNX export, once it reproduces scikit-learn's recorded answers.

    None (with a warning naming why) when there is no export, it is damaged, or its
    replayed parity check fails; the caller then loads scikit-learn.
    """
    try:
        packed = onnx_export.read(model_dir)
        if packed is None:
            logger.warning("v%s has no ONNX export; serving scikit-learn", identity.version)
            return None
        predictor = OnnxClassifier(packed.serialized, bulk_threads=threads)
        problem = packed.replay(predictor.predict_proba)
        class_names = read_class_names(model_dir)
    except Exception as e:  # noqa: BLE001 - any damage means "do not serve this file"
        logger.warning(
            "ONNX export of v%s unusable (%s); loading scikit-learn", identity.version, e
        )
        return None
    if problem:
        logger.warning(
            "ONNX export of v%s fails its parity replay (%s); loading scikit-learn",
            identity.version,
            problem,
        )
        return None
    logger.info(
        "Loaded the ONNX export of v%s; parity replayed on %d rows",
        identity.version,
        len(packed.inputs),
    )
    return ServedModel(replace(identity, runtime="onnx"), class_names, predictor, True)


def load_model_dir(
    model_dir: Path, identity: ModelIdentity, *, threads: int | None = None
) -> ServedModel:
    """Load an MLflow model folder for serving: its verified ONNX export, else scikit-learn.
    ``threads`` caps ONNX Runtime's threads for big calls (by default, the cores, up to 4).

    Every folder a worker loads was prepared by ``onnx_export.ensure`` (training, the
    BentoML import, or the fetch), so a folder without a usable export is a model ONNX
    cannot reproduce: scikit-learn serves it (skops with our trusted types), and the
    worker never compiles a graph itself.
    """
    model = load_exported(model_dir, identity, threads=threads)
    if model is None:
        classifier = load_classifier(model_dir)
        model = ServedModel(
            replace(identity, runtime="sklearn"),
            classifier.class_names,
            SklearnPredictor(classifier.estimator),
            False,
        )
    try:
        profile = reference_profile.read(model_dir)
    except (OSError, ValueError) as e:  # drift cannot be measured; serving goes on
        logger.warning("No usable reference profile for v%s: %s", identity.version, e)
        profile = None
    return replace(model, profile=profile, model_dir=model_dir)


class ModelHolder:
    """The models a worker serves: the champion, and the challenger when the registry has
    one (shadow scoring, canary answers), plus the canary split. Each is swapped by the
    reloader with one reference assignment."""

    def __init__(self, model: ServedModel):
        self._current = model
        self.challenger: ServedModel | None = None
        self.canary_percent = 0.0
        self.canary_version: str | None = None  # the split applies to this challenger only
        self._lock = threading.Lock()

    @property
    def current(self) -> ServedModel:
        return self._current

    def swap(self, model: ServedModel) -> ServedModel:
        """Serve ``model`` from now on; returns the previous one."""
        with self._lock:
            previous, self._current = self._current, model
        logger.info(
            "Now serving %s v%s (%s, from %s; was v%s)",
            model.identity.name,
            model.identity.version,
            model.identity.runtime,
            model.identity.source,
            previous.identity.version,
        )
        return previous

    def set_challenger(self, model: ServedModel | None) -> None:
        if model is not None:
            logger.info("Challenger v%s loaded beside the champion", model.identity.version)
        elif self.challenger is not None:
            logger.info("Challenger v%s dropped", self.challenger.identity.version)
        self.challenger = model
