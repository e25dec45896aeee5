"""What a capture sink writes: the Parquet rows of a spooled flush, one per flower.

A worker spools one row per answer (``serving.capture_columns``); its capture sink makes
the rows of the Parquet files from it (:func:`capture_table`: :data:`PARQUET_COLUMNS`, row
ids ``<answer id>-<row>``, species names), and ``serving.capture_spool.index_rows`` the
answers of the prediction index (:func:`spool_rows`). Arrow compute kernels over numpy
buffers only: no Python object per flower.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np

from serving.arrow_buffers import list_parts, numeric_array, numpy_of, string_array
from serving.capture_columns import METAS_KEY, Meta
from training.answers import row_argmax
from training.schema import FEATURES

PARQUET_COLUMNS = (
    "time",
    "prediction_id",
    "protocol",
    "model_name",
    "role",
    *FEATURES,
    "species",
    "probabilities",
    "latency_ms",
)
"""The capture files' columns, in order (the model version is the partition's)."""
DICTIONARY_COLUMNS = ["protocol", "model_name", "role", "species"]
"""Columns with a handful of values, dictionary-encoded in the files. The others (unique
ids, measurements) are not: trying a dictionary for them costs half the write time."""


class SpoolRows(NamedTuple):
    """A spool table's flowers: one entry per row of the Parquet files."""

    metas: list[Meta]
    answer: np.ndarray  # (rows,) index of each flower's answer in the spool table
    meta: np.ndarray  # (answers,) code of each answer into ``metas``
    starts: np.ndarray  # (answers + 1,) first flower of each answer, then the total
    inputs: np.ndarray  # (rows, 4) float32
    proba: np.ndarray  # (rows, classes) float32
    predicted: np.ndarray  # (rows,) the served class: each row's argmax, as served


def spool_rows(spool) -> SpoolRows:
    """The flowers of a spool table (``serving.capture_columns``), with their answers:
    decoded once per spool file, for both its Parquet rows and its index answers."""
    metas = [Meta(*m[:-1], tuple(m[-1])) for m in json.loads(spool.schema.metadata[METAS_KEY])]
    starts, flat = list_parts(spool["inputs"])
    starts //= len(FEATURES)
    inputs = flat.reshape(-1, len(FEATURES))
    proba_offsets, proba = list_parts(spool["probabilities"])
    if len(inputs):
        proba = proba.reshape(len(inputs), proba_offsets[-1] // len(inputs))
    else:
        proba = proba.reshape(0, len(metas[0].classes) if metas else 0)
    answer = np.repeat(np.arange(spool.num_rows, dtype=np.int32), np.diff(starts))
    meta = numpy_of(spool["meta"], np.int32)
    return SpoolRows(metas, answer, meta, starts, inputs, proba, row_argmax(proba))


def capture_table(spool, found: SpoolRows):
    """The Parquet rows of a spool table (its flowers: ``found``), one per flower:
    :data:`PARQUET_COLUMNS`, then ``model_version`` (the files' partition). Flowers of one
    answer stay together, in order; a batch row's id is ``<answer id>-<row>``, a single
    flower's the answer's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    metas, answer, total = found.metas, found.answer, len(found.inputs)
    meta = found.meta[answer]
    owner = numeric_array(answer)

    def per_answer(name: str):  # a spool column, repeated for each flower of its answer
        return pc.take(spool[name].combine_chunks(), owner)

    base = per_answer("answer_id")
    row_in_answer = (np.arange(total) - found.starts[answer]).astype(np.int32)
    suffixed = pc.binary_join_element_wise(
        base, pc.cast(numeric_array(row_in_answer), pa.string()), _dashes(total)
    )

    def per_meta(values: list[str]):  # one value per model/role/protocol, for each flower
        return pc.take(string_array(values), numeric_array(meta))

    # Species: the argmax of each row's probabilities (exactly how the served name was
    # chosen), looked up in one list of every class name of the spool.
    names: list[str] = []
    lookup = np.array(
        [[_index(names, c) for c in m.classes] for m in metas] or [[0]], dtype=np.int32
    )
    species_index = lookup[meta, found.predicted] if total else meta
    columns = {
        "time": per_answer("time"),
        "prediction_id": pc.if_else(per_answer("single"), base, suffixed),
        "protocol": per_meta([m.protocol for m in metas]),
        "model_name": per_meta([m.model_name for m in metas]),
        "role": per_meta([m.role for m in metas]),
    }
    for i, name in enumerate(FEATURES):
        columns[name] = numeric_array(found.inputs[:, i])
    columns["species"] = pc.take(string_array(names), numeric_array(species_index))
    columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
        numeric_array(found.proba.reshape(-1)), found.proba.shape[1]
    )
    columns["latency_ms"] = per_answer("latency_ms")
    columns["model_version"] = per_meta([m.model_version for m in metas])
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


def _index(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _dashes(n: int):
    """``n`` strings ``"-"``, the separator of a row id (an array, as the kernel needs)."""
    import pyarrow as pa

    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(b"-" * n))
