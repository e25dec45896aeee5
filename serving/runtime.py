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

from training.model_io import LoadedClassifier, load_classifier
from training.schema import FEATURES

logger = logging.getLogger(__name__)

PARITY_ATOL = 1e-5
PARITY_PROBES = 2000
DECIMALS = 6
"""Probabilities are served rounded to 1e-6: ONNX computes in float32, whose noise digits
(0.9700000286102295) would only lengthen every answer."""
BULK_ROWS = 1024
"""From this many rows, a call runs on every core the process may use (see OnnxPredictor)."""


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

    def predict(self, features: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Species names and class probabilities (rows sum to 1) for an (n, 4) array."""
        proba = self.predictor.predict_proba(features).round(DECIMALS)
        names = self.class_names
        return [names[i] for i in proba.argmax(axis=1)], proba  # == served_labels(raw)


def served_labels(proba: np.ndarray) -> np.ndarray:
    """The class index served for each row: the first of the largest rounded probabilities.

    Rounding first makes ties ties: a forest's 0.5/0.5 comes out of ONNX's float32 sums as
    0.49999997/0.50000003 in an order that depends on threads, and scikit-learn, like
    ``argmax``, gives a tie to the first class. The species shown is then always the
    largest probability shown.
    """
    return proba.round(DECIMALS).argmax(axis=1)


class OnnxPredictor:
    """A scikit-learn classifier compiled to ONNX and run by ONNX Runtime.

    Two sessions share the model. Small calls (every single-flower request) run on one
    thread: several workers already share the cores, and waking a thread pool costs more
    than a 15 µs call. Calls of ``BULK_ROWS`` rows or more run on every core the process
    may use, which halves a 10,000-row batch on two cores.
    """

    def __init__(self, estimator: object, n_features: int):
        from skl2onnx import to_onnx

        final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        sample = np.zeros((1, n_features), dtype=np.float32)
        onx = to_onnx(estimator, sample, options={id(final): {"zipmap": False}}, target_opset=17)
        serialized = onx.SerializeToString()
        self._session = _session(serialized, threads=1)
        cores = len(os.sched_getaffinity(0))
        self._bulk = _session(serialized, threads=min(cores, 4)) if cores > 1 else self._session
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs() if o.name == "probabilities"]
        if not self._outputs:
            raise ValueError("converted model has no 'probabilities' output")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        session = self._bulk if len(x) >= BULK_ROWS else self._session
        return session.run(self._outputs, {self._input: x})[0].astype(np.float64)


def _session(serialized: bytes, *, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])


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


def probe_inputs(n: int = PARITY_PROBES, seed: int = 0) -> np.ndarray:
    """Deterministic points covering (and beyond) every measurement seen in real irises."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 9.0, size=(n, len(FEATURES)))


def check_parity(reference: Predictor, candidate: Predictor, probes: np.ndarray) -> str | None:
    """None if both agree on every probe (same labels, probabilities within 1e-5)."""
    expected, got = reference.predict_proba(probes), candidate.predict_proba(probes)
    if expected.shape != got.shape:
        return f"shape {got.shape} != {expected.shape}"
    worst = float(np.abs(expected - got).max())
    flips = int((served_labels(expected) != served_labels(got)).sum())
    if worst > PARITY_ATOL or flips:
        return f"max |Δp|={worst:.2e}, {flips} label(s) differ"
    return None


def build(
    classifier: LoadedClassifier, identity: ModelIdentity, *, use_onnx: bool = True
) -> ServedModel:
    """Wrap a loaded classifier for serving, compiled to ONNX when that is exact.

    Falls back to scikit-learn, with a warning, if conversion fails or ONNX and
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
        onnx = OnnxPredictor(classifier.estimator, len(FEATURES))
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


def load_model_dir(
    model_dir: Path, identity: ModelIdentity, *, use_onnx: bool = True
) -> ServedModel:
    """Safely load an MLflow model folder (skops + our trusted types) and build it."""
    return build(load_classifier(model_dir), identity, use_onnx=use_onnx)


class ModelHolder:
    """The one model a worker serves; swapped atomically by the reloader."""

    def __init__(self, model: ServedModel):
        self._current = model
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
