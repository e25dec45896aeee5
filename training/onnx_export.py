"""Compile a classifier to ONNX once, beside its MLflow model, with the proof that it matches.

:func:`ensure` is the one place an export is produced: training calls it for every logged
model, and the two steps that make a registry version ready to serve (the BentoML import,
``training.bento_store``, and a worker's fetch, ``serving.fetch_model``) call it for any
version that lacks a true export. A serving worker never imports scikit-learn or skl2onnx
to compile one; :class:`OnnxClassifier` is how both the check here and serving run a graph.

- ``onnx/model.onnx``: the classifier as an ONNX graph (probabilities output, no zipmap);
- ``onnx/parity.npz``: the inputs it was checked on (the test set plus ``PARITY_PROBES``
  points covering every plausible measurement) and scikit-learn's probabilities for them;
- ``onnx/export.json``: the model file's SHA-256, versions, and the check's result.

A worker replays ``parity.npz`` through the ONNX file before serving it
(:func:`serving.served_model.load_model_dir`): the same check, against scikit-learn's recorded
answers, without loading scikit-learn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.onnx_model import OnnxClassifier, served_labels

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
MODEL_FILE = "model.onnx"
PARITY_FILE = "parity.npz"
REPORT_FILE = "export.json"
PARITY_ATOL = 1e-5
PARITY_PROBES = 2000
TARGET_OPSET = 17


def probe_inputs(n: int = PARITY_PROBES, seed: int = 0, n_features: int = 4) -> np.ndarray:
    """Deterministic points covering (and beyond) every measurement seen in real irises."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 9.0, size=(n, n_features))


def compare(expected: np.ndarray, got: np.ndarray) -> str | None:
    """None if ``got`` matches ``expected`` (same served labels, |Δp| <= 1e-5), else why not."""
    if expected.shape != got.shape:
        return f"shape {got.shape} != {expected.shape}"
    if not (np.isfinite(expected).all() and np.isfinite(got).all()):
        return "non-finite probabilities (NaN or inf)"
    worst = float(np.abs(expected - got).max()) if expected.size else 0.0
    flips = int((served_labels(expected) != served_labels(got)).sum())
    if not worst <= PARITY_ATOL or flips:
        return f"max |Δp|={worst:.2e}, {flips} label(s) differ"
    return None


def convert(estimator: object, n_features: int) -> bytes:
    """The estimator as a serialized ONNX model whose 'probabilities' output is an array."""
    from skl2onnx import to_onnx

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    sample = np.zeros((1, n_features), dtype=np.float32)
    options = {id(final): {"zipmap": False}}
    return to_onnx(
        estimator, sample, options=options, target_opset=TARGET_OPSET
    ).SerializeToString()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _export(
    estimator: object, model_dir: Path, *, n_features: int, extra_inputs: np.ndarray | None = None
) -> dict | None:
    """Write ``model_dir/onnx/`` for ``estimator`` if ONNX matches it exactly; else nothing.

    Args:
        estimator: the fitted scikit-learn classifier (or pipeline).
        model_dir: the MLflow model folder to write beside.
        n_features: number of input columns.
        extra_inputs: rows to check besides the probes (the test set).

    Returns:
        The report written to ``export.json``, or None when conversion or the parity check
        failed (logged as a warning: serving will then use scikit-learn).
    """
    started = time.perf_counter()
    probes = probe_inputs(n_features=n_features)
    if extra_inputs is not None and len(extra_inputs):
        probes = np.vstack([np.asarray(extra_inputs, dtype=np.float64), probes])
    probes = probes.astype(np.float32)  # what ONNX computes on; scikit-learn sees the same
    try:
        serialized = convert(estimator, n_features)
        got = OnnxClassifier(serialized, bulk_threads=1).predict_proba(probes)
    except Exception:
        logger.warning(
            "ONNX conversion failed; the model will be served by scikit-learn", exc_info=True
        )
        return None
    expected = np.asarray(estimator.predict_proba(_frame_like(estimator, probes)), dtype=np.float64)
    problem = compare(expected, got)
    if problem:
        logger.warning("ONNX does not match scikit-learn (%s); not exporting it", problem)
        return None
    report = {
        "model_sha256": sha256(serialized),
        "target_opset": TARGET_OPSET,
        "parity_rows": len(probes),
        "parity_max_abs_diff": float(np.abs(expected - got).max()),
        "parity_atol": PARITY_ATOL,
        "versions": _versions(),
    }
    _write_atomically(model_dir / ONNX_DIR, serialized, probes, expected, report)
    logger.info(
        "Exported ONNX in %.0f ms; parity holds on %d rows (max |Δp| %.1e)",
        (time.perf_counter() - started) * 1000,
        len(probes),
        report["parity_max_abs_diff"],
    )
    return report


def ensure(
    model_dir: Path, estimator: object, n_features: int, extra_inputs: np.ndarray | None = None
) -> bool:
    """Make sure a model folder carries an export that is true to ``estimator``.

    ``extra_inputs`` (training passes the test set) are checked besides the probes when an
    export is written.

    The folder's own SHA-256 and parity record only prove it is self-consistent: whoever
    can write the model could write all three files. So an existing export is kept only
    if scikit-learn, loaded safely by the caller, gives the recorded answers and the graph
    reproduces them; otherwise (missing, damaged, or not this model's) it is exported
    afresh. True if the folder has a verified export afterwards.
    """
    try:
        packed = read(model_dir)
    except ValueError as e:
        logger.warning("Replacing a damaged ONNX export: %s", e)
        packed = None
    if packed is not None:
        problem = verify(packed, estimator)
        if problem is None:
            return True
        logger.warning("Replacing an ONNX export that does not match its model: %s", problem)
    return (
        _export(estimator, model_dir, n_features=n_features, extra_inputs=extra_inputs) is not None
    )


def verify(packed: Packed, estimator: object) -> str | None:
    """None if the export matches ``estimator`` on its recorded inputs, else why not."""
    sklearn = np.asarray(estimator.predict_proba(_frame_like(estimator, packed.inputs)))
    problem = compare(sklearn, packed.expected)
    if problem:
        return f"recorded answers are not this model's ({problem})"
    try:
        problem = packed.replay(OnnxClassifier(packed.serialized, bulk_threads=1).predict_proba)
    except Exception as e:  # noqa: BLE001 - an unloadable graph is a mismatch
        return f"graph does not run ({type(e).__name__}: {e})"
    return None if problem is None else f"graph does not reproduce them ({problem})"


@dataclass(frozen=True)
class Packed:
    """An exported ONNX model read back from a model folder, not yet verified."""

    serialized: bytes
    inputs: np.ndarray
    expected: np.ndarray
    report: dict

    def replay(self, predict_proba: Callable[[np.ndarray], np.ndarray]) -> str | None:
        """None if ``predict_proba`` (the graph, run as served) gives the recorded answers."""
        if len(self.inputs) < PARITY_PROBES:
            return f"parity record has only {len(self.inputs)} rows, fewer than {PARITY_PROBES}"
        return compare(self.expected, predict_proba(self.inputs))


def read(model_dir: Path) -> Packed | None:
    """The ``onnx/`` export of a model folder, or None if it has none.

    Raises:
        ValueError: the export is there but unreadable or its model file is not the one
            the report names (a partial or tampered copy).
    """
    folder = model_dir / ONNX_DIR
    if not (folder / REPORT_FILE).is_file():
        return None
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
        serialized = (folder / MODEL_FILE).read_bytes()
        with np.load(folder / PARITY_FILE, allow_pickle=False) as parity:
            inputs, expected = parity["inputs"], parity["expected"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{folder}: unreadable ONNX export ({type(e).__name__}: {e})") from None
    if sha256(serialized) != report.get("model_sha256"):
        raise ValueError(f"{folder / MODEL_FILE}: SHA-256 differs from {REPORT_FILE}")
    return Packed(serialized, inputs, expected, report)


def read_or_none(model_dir: Path) -> Packed | None:
    """The export of a model folder, or None when it has none or it is damaged."""
    try:
        return read(model_dir)
    except ValueError:
        return None


def _frame_like(estimator: object, x: np.ndarray):
    """``x`` with the column names the estimator was fitted with (no feature-name warnings)."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return x.astype(np.float64)
    import pandas as pd

    return pd.DataFrame(x.astype(np.float64), columns=list(names))


def _write_atomically(
    folder: Path, serialized: bytes, inputs: np.ndarray, expected: np.ndarray, report: dict
) -> None:
    """Fill a sibling temp folder, then rename it into place: never a half-written export."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=folder.parent))
    try:
        (tmp / MODEL_FILE).write_bytes(serialized)
        np.savez_compressed(tmp / PARITY_FILE, inputs=inputs, expected=expected)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("skl2onnx", "onnxruntime", "scikit-learn", "onnx")}
