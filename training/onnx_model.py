"""Running an exported ONNX graph exactly as it is served.

:class:`OnnxClassifier` is the one way a graph is run, by the export's parity check
(``training.onnx_export``) and by serving (``serving.served_model``), and :func:`served`
the one post-processing of probabilities (rounding, the class shown), so what was checked
is what is served.
"""

from __future__ import annotations

import os

import numpy as np

DECIMALS = 6
"""Probabilities are served rounded to 1e-6: ONNX computes in float32, whose noise digits
(0.9700000286102295) would only lengthen every answer."""


def served(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What is served for class probabilities: (rounded probabilities, class index per row).

    The class is the first of the largest rounded probabilities. Rounding first makes ties
    ties: a forest's 0.5/0.5 comes out of ONNX's float32 sums as 0.49999997/0.50000003 in
    an order that depends on threads, and scikit-learn, like ``argmax``, gives a tie to the
    first class. The species shown is then always the largest probability shown.
    """
    rounded = proba.round(DECIMALS)
    return rounded, rounded.argmax(axis=1)


def served_labels(proba: np.ndarray) -> np.ndarray:
    """The class index served for each row (see :func:`served`)."""
    return served(proba)[1]


BULK_ROWS = 1024
"""From this many rows, a call runs on every core the process may use (see OnnxClassifier)."""


class OnnxClassifier:
    """A classifier's ONNX graph run by ONNX Runtime: float64 probabilities that sum to 1.

    Two sessions share the model. Small calls (every single-flower request) run on one
    thread: several workers already share the cores, and waking a thread pool costs more
    than a 15 µs call. Calls of ``BULK_ROWS`` rows or more run on every core the process
    may use (up to 4), which halves a 10,000-row batch on two cores.
    """

    def __init__(self, serialized: bytes, *, bulk_threads: int | None = None):
        self._session = session(serialized, threads=1)
        cores = len(os.sched_getaffinity(0)) if bulk_threads is None else bulk_threads
        self._bulk = session(serialized, threads=min(cores, 4)) if cores > 1 else self._session
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs() if o.name == "probabilities"]
        if not self._outputs:
            raise ValueError("ONNX model has no 'probabilities' output")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        graph = self._bulk if len(x) >= BULK_ROWS else self._session
        return normalized(graph.run(self._outputs, {self._input: x})[0])


def normalized(proba: np.ndarray) -> np.ndarray:
    """ONNX's float32 probabilities as float64 rows that sum to 1.

    A forest's float32 sum of 100 trees' 0.01 is 0.9999993 for a sure flower; scaled
    back, the served (rounded) answer reads 1.0, as scikit-learn's does.
    """
    proba = proba.astype(np.float64)
    total = proba.sum(axis=1, keepdims=True)
    if total.all():  # the only case in practice, and the cheapest (this runs per request)
        return proba / total
    # A row of zeros (no model produces one) stays zeros instead of becoming NaN.
    return np.divide(proba, total, out=np.zeros_like(proba), where=total > 0)


def session(serialized: bytes, *, threads: int = 1):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if threads > 1:
        # A pool that spins after its work (ONNX Runtime's default) burns the cores that
        # the other workers and their event loops need; waking it costs microseconds
        # against a bulk call's milliseconds.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
