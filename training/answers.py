"""Served answers as the loop store indexes them, and the prediction ids that name their rows.

An answer is indexed as one row however many flowers it classified: its inputs and
predicted classes packed as bytes (``INPUTS_DTYPE``, ``CLASSES_DTYPE``). A single flower's
prediction id is the answer's id; a batch row's is ``<answer id>-<row>`` (:func:`parse_id`).
The store takes answers column by column (:class:`IndexRows`): a capture sink builds the
columns of a whole flush at once (``serving.capture_spool.index_rows``), with no object per
answer; one :class:`Answer` at a time is for callers that have a few.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
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

    def record(self) -> tuple[str, float, str, str, bool, int, str, bytes, bytes]:
        """Its row of the index, in :class:`IndexRows`' column order."""
        return (
            self.answer_id,
            self.time,
            self.model_version,
            self.role,
            self.single,
            len(self.predicted),
            classes_json(self.classes),
            np.ascontiguousarray(self.predicted, dtype=CLASSES_DTYPE).tobytes(),
            np.ascontiguousarray(self.inputs, dtype=INPUTS_DTYPE).tobytes(),
        )


@dataclass(frozen=True, slots=True)
class IndexRows:
    """Answers as the index stores them, one list per column (the index table's columns,
    in order), one entry per answer."""

    answer_id: list[str]
    time: list[float]  # epoch seconds
    model_version: list[str]
    role: list[str]
    single: list[bool]
    n_rows: list[int]
    classes: list[str]  # JSON list, the model's class order (:func:`classes_json`)
    predicted: list[bytes]  # CLASSES_DTYPE per row
    inputs: list[bytes]  # INPUTS_DTYPE, n_rows x 4

    def __post_init__(self) -> None:
        lengths = {len(column) for column in self.lists()}
        if len(lengths) > 1:
            raise ValueError(f"index columns of unequal lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.answer_id)

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The index table's column names, in order (the fields')."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, answers: Iterable[Answer]) -> IndexRows:
        """The columns of answers given one at a time (each packed by ``Answer.record``)."""
        records = [a.record() for a in answers]
        if not records:
            return cls(*([] for _ in cls.columns()))
        return cls(*(list(column) for column in zip(*records, strict=True)))

    def lists(self) -> tuple[list, ...]:
        """The columns, in order."""
        return tuple(getattr(self, name) for name in self.columns())

    def rows(self) -> Iterator[tuple]:
        """One tuple per answer, in column order."""
        return zip(*self.lists(), strict=True)

    def where(self, keep: list[bool]) -> IndexRows:
        """The answers whose ``keep`` is true."""
        return IndexRows(*([v for v, k in zip(c, keep, strict=True) if k] for c in self.lists()))


@lru_cache(maxsize=64)
def classes_json(classes: tuple[str, ...]) -> str:
    """A model's class order as the index stores it (a JSON list), made once per order."""
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
