"""One served answer as the loop store indexes it, and the prediction ids that name its rows.

An answer is indexed as one row however many flowers it classified: its inputs and
predicted classes packed as bytes (``INPUTS_DTYPE``, ``CLASSES_DTYPE``). A single flower's
prediction id is the answer's id; a batch row's is ``<answer id>-<row>`` (:func:`parse_id`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

INPUTS_DTYPE = np.dtype("<f4")  # (rows, 4) float32, little-endian, FEATURES order
CLASSES_DTYPE = np.dtype("<u2")  # one class index per row, into the answer's class list


@dataclass(frozen=True, slots=True)
class Answer:
    """One answered request as indexed: all its rows under one id."""

    answer_id: str
    time: float
    model_version: str
    role: str
    single: bool
    classes: tuple[str, ...]
    predicted: np.ndarray  # (n,) class indices into ``classes``
    inputs: np.ndarray  # (n, 4), FEATURES order

    def record(self) -> dict:
        return {
            "answer_id": self.answer_id,
            "time": self.time,
            "model_version": self.model_version,
            "role": self.role,
            "single": self.single,
            "n_rows": len(self.predicted),
            "classes": _classes_json(self.classes),
            "predicted": np.ascontiguousarray(self.predicted, dtype=CLASSES_DTYPE).tobytes(),
            "inputs": np.ascontiguousarray(self.inputs, dtype=INPUTS_DTYPE).tobytes(),
        }


@lru_cache(maxsize=64)
def _classes_json(classes: tuple[str, ...]) -> str:
    return json.dumps(list(classes))


def row_argmax(proba: np.ndarray) -> np.ndarray:
    """``proba.argmax(axis=1)`` (first maximum on ties), a few times faster for a few
    columns and many rows: one vectorised comparison per class instead of one per row."""
    index = np.zeros(len(proba), dtype=np.intp)
    best = proba[:, 0].copy()
    for j in range(1, proba.shape[1]):
        column = proba[:, j]
        index[column > best] = j
        np.maximum(best, column, out=best)
    return index


def parse_id(prediction_id: str) -> tuple[str, int | None] | None:
    """``<answer id>`` -> (id, None); ``<answer id>-<row>`` -> (id, row); None if neither."""
    base, dash, row = prediction_id.partition("-")
    if not dash:
        return base, None
    # Exactly as the server writes rows (no sign, no leading zero): one spelling per row.
    if not row.isdigit() or not row.isascii() or (row != "0" and row.startswith("0")):
        return None
    return base, int(row)
