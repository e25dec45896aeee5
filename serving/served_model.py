"""The in-memory model that answers predictions, and how it is built and swapped.

A :class:`ServedModel` is immutable. Workers hold exactly one at a time in a
:class:`ModelHolder`; a request reads ``holder.current`` once and uses that object to the
end, so a reload (a plain reference assignment) can never mix two versions in one answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from training import onnx_export, reference_profile
from training.model_io import LoadedClassifier, load_classifier, read_class_names
from training.onnx_export import DECIMALS, PARITY_PROBES, probe_inputs, served_labels
from training.schema import FEATURES

logger = logging.getLogger(__name__)

BULK_ROWS = 1024
"""From this many rows, a call runs on every core the process may use (see OnnxPredictor)."""

__all__ = ["BULK_ROWS", "DECIMALS", "probe_inputs", "served_labels"]


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

    def predict(self, features: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Species names and class probabilities (rows sum to 1) for an (n, 4) array."""
        proba = self.predictor.predict_proba(features).round(DECIMALS)
        names = self.class_names
        return [names[i] for i in proba.argmax(axis=1)], proba  # == served_labels(raw)


class OnnxPredictor:
    """A classifier's ONNX graph run by ONNX Runtime.

    Two sessions share the model. Small calls (every single-flower request) run on one
    thread: several workers already share the cores, and waking a thread pool costs more
    than a 15 µs call. Calls of ``BULK_ROWS`` rows or more run on every core the process
    may use (up to 4), which halves a 10,000-row batch on two cores.
    """

    def __init__(self, serialized: bytes):
        self._session = onnx_export.session(serialized, threads=1)
        cores = len(os.sched_getaffinity(0))
        self._bulk = (
            onnx_export.session(serialized, threads=min(cores, 4)) if cores > 1 else self._session
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs() if o.name == "probabilities"]
        if not self._outputs:
            raise ValueError("ONNX model has no 'probabilities' output")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        session = self._bulk if len(x) >= BULK_ROWS else self._session
        return onnx_export.normalized(session.run(self._outputs, {self._input: x})[0])


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


def check_parity(reference: Predictor, candidate: Predictor, probes: np.ndarray) -> str | None:
    """None if both agree on every probe (same served labels, probabilities within 1e-5)."""
    return onnx_export.compare(reference.predict_proba(probes), candidate.predict_proba(probes))


def build(
    classifier: LoadedClassifier, identity: ModelIdentity, *, use_onnx: bool = True
) -> ServedModel:
    """Wrap a loaded classifier for serving, compiled to ONNX here when that is exact.

    For models without an ONNX export (logged before exports existed, or whose export
    failed). Falls back to scikit-learn, with a warning, if conversion fails or ONNX and
    scikit-learn disagree on any probe point.
    """
    reference = SklearnPredictor(classifier.estimator)
    sklearn_model = ServedModel(
        replace(identity, runtime="sklearn"), classifier.class_names, reference, False
    )
    if not use_onnx:
        return sklearn_model
    started = time.perf_counter()
    try:
        onnx = OnnxPredictor(onnx_export.convert(classifier.estimator, len(FEATURES)))
    except Exception:
        logger.warning(
            "ONNX conversion of v%s failed; serving scikit-learn", identity.version, exc_info=True
        )
        return sklearn_model
    problem = check_parity(reference, onnx, probe_inputs())
    if problem:
        logger.warning(
            "ONNX parity check failed for v%s (%s); serving scikit-learn", identity.version, problem
        )
        return sklearn_model
    logger.info(
        "Compiled v%s to ONNX in %.0f ms; parity holds on %d probes",
        identity.version,
        (time.perf_counter() - started) * 1000,
        PARITY_PROBES,
    )
    return ServedModel(replace(identity, runtime="onnx"), classifier.class_names, onnx, True)


def load_exported(model_dir: Path, identity: ModelIdentity) -> ServedModel | None:
    """The model's ONNX export, once it reproduces scikit-learn's recorded answers.

    None (with a warning naming why) when there is no export, it is damaged, or its
    replayed parity check fails; the caller then loads scikit-learn.
    """
    try:
        packed = onnx_export.read(model_dir)
        if packed is None:
            logger.info("v%s has no ONNX export; compiling it in this process", identity.version)
            return None
        predictor = OnnxPredictor(packed.serialized)
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
    model_dir: Path, identity: ModelIdentity, *, use_onnx: bool = True
) -> ServedModel:
    """Load an MLflow model folder for serving: its verified ONNX export if it has one,
    else scikit-learn (skops with our trusted types), compiled to ONNX when exact."""
    model = load_exported(model_dir, identity) if use_onnx else None
    if model is None:
        model = build(load_classifier(model_dir), identity, use_onnx=use_onnx)
    try:
        profile = reference_profile.read(model_dir)
    except (OSError, ValueError) as e:  # drift cannot be measured; serving goes on
        logger.warning("No usable reference profile for v%s: %s", identity.version, e)
        profile = None
    return replace(model, profile=profile)


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
