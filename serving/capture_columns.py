"""A worker's queued answers, column by column, and the spool table a flush makes of them.

A request's answer is copied into preallocated arrays (:class:`AnswerColumns`), so the
request's own objects are freed at once and a flush is a few slices of these arrays,
not a pass over one object per answer. The arrays grow by doubling and never shrink; with
three classes a single flower takes 49 bytes, so the two sets (the one requests fill, the
one a flush reads) hold at most about 13 MB at the default ``IRIS_CAPTURE_MAX_PENDING``
of 100,000 rows (131,072 each after doubling), plus the queued ids. The
*spool table* it writes has one row per answer, its flowers and probabilities as list
columns, and each answer's model, role and protocol as a code into a short list
(:class:`Meta`) kept in the table's metadata. Everything made per flower (row ids, species
names) is left to the capture sink (``serving.capture_table``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from serving.arrow_buffers import bool_array, list_array, numeric_array, string_array
from training.schema import FEATURES

if TYPE_CHECKING:
    from serving.capture import Chunk

METAS_KEY = b"iris.metas"
"""Spool table metadata: the JSON list of :class:`Meta` the ``meta`` column points into."""


class Meta(NamedTuple):
    """What answers of one model, role and protocol share (one code per answer)."""

    model_name: str
    model_version: str
    role: str
    protocol: str
    classes: tuple[str, ...]


class AnswerColumns:
    """Answers queued for one flush, copied into preallocated arrays as they come; the
    arrays are reused, flush after flush (:meth:`clear`)."""

    def __init__(self, rows: int = 1024, answers: int = 1024):
        self.inputs = np.empty((rows, len(FEATURES)), dtype=np.float32)
        self.proba = np.empty((rows, 0), dtype=np.float32)
        self.time = np.empty(answers, dtype=np.float64)
        self.latency = np.empty(answers, dtype=np.float32)
        self.single = np.empty(answers, dtype=bool)
        self.meta = np.empty(answers, dtype=np.int32)
        self.ends = np.empty(answers, dtype=np.int32)  # rows before each answer's end
        self.bases: list[str] = []
        self.metas: dict[Meta, int] = {}
        self.rows = 0

    def __len__(self) -> int:
        return len(self.bases)

    def add(self, chunk: Chunk) -> str | None:
        """Copy one answer in; None if done, else why not (nothing is changed then).

        A flush's probabilities share one width: an answer whose model has another number
        of classes than the first answer of this flush is refused.
        """
        rows, proba = chunk.rows, chunk.proba
        n = len(rows)
        if rows.shape != (n, len(FEATURES)) or proba.shape != (n, len(chunk.classes)):
            return f"rows {rows.shape} and probabilities {proba.shape} do not match"
        width = proba.shape[1]
        if not self.bases:
            if self.proba.shape[1] != width:
                self.proba = np.empty((len(self.inputs), width), dtype=np.float32)
        elif width != self.proba.shape[1]:
            return f"a model with {width} classes among answers with {self.proba.shape[1]}"
        a, start = len(self.bases), self.rows
        if start + n > len(self.inputs):
            size = max(2 * len(self.inputs), start + n)
            self.inputs = _grown(self.inputs, size, start)
            self.proba = _grown(self.proba, size, start)
        if a + 1 > len(self.time):
            size = 2 * len(self.time)
            for name in ("time", "latency", "single", "meta", "ends"):
                setattr(self, name, _grown(getattr(self, name), size, a))
        self.inputs[start : start + n] = rows
        self.proba[start : start + n] = proba
        meta = Meta(
            chunk.model_name, chunk.model_version, chunk.role, chunk.protocol, chunk.classes
        )
        code = self.metas.get(meta)
        if code is None:
            code = self.metas[meta] = len(self.metas)
        self.rows = start + n
        self.time[a] = chunk.time
        self.latency[a] = chunk.latency_ms
        self.single[a] = chunk.single
        self.meta[a] = code
        self.ends[a] = start + n
        self.bases.append(chunk.base)
        return None

    def clear(self) -> None:
        self.bases = []
        self.metas = {}
        self.rows = 0

    def table(self, metadata: dict[bytes, bytes] | None = None):
        """The spool table: one row per answer, ``time``, ``answer_id``, ``single``,
        ``meta``, ``latency_ms``, and the lists ``inputs`` (4 per flower) and
        ``probabilities`` (one per class); ``metadata`` is added to the table's."""
        import pyarrow as pa

        a, rows, width = len(self.bases), self.rows, self.proba.shape[1]
        if rows * max(width, len(FEATURES)) >= 2**31:
            raise ValueError(f"{rows} rows in one flush: more than Arrow's 32-bit offsets hold")
        offsets = np.zeros(a + 1, dtype=np.int32)
        offsets[1:] = self.ends[:a]
        columns = {
            "time": numeric_array(
                (self.time[:a] * 1_000_000).astype(np.int64), pa.timestamp("us", tz="UTC")
            ),
            "answer_id": string_array(self.bases),
            "single": bool_array(self.single[:a]),
            "meta": numeric_array(self.meta[:a]),
            "latency_ms": numeric_array(self.latency[:a]),
            "inputs": list_array(offsets * len(FEATURES), self.inputs[:rows].reshape(-1)),
            "probabilities": list_array(offsets * width, self.proba[:rows].reshape(-1)),
        }
        metas = json.dumps([[*m[:-1], list(m[-1])] for m in self.metas])
        return pa.Table.from_arrays(
            list(columns.values()),
            names=list(columns),
            metadata={**(metadata or {}), METAS_KEY: metas},
        )


def _grown(array: np.ndarray, size: int, keep: int) -> np.ndarray:
    bigger = np.empty((size, *array.shape[1:]), dtype=array.dtype)
    bigger[:keep] = array[:keep]
    return bigger
