"""The capture's tables: what a worker spools each flush, and what its sink writes.

A worker turns its queued chunks into one *spool table* (:func:`spool_table`): one row per
answer, its flowers and probabilities as list columns over the chunks' concatenated
buffers, and each answer's model, role and protocol as a code into a short list kept in
the table's metadata. That takes a handful of C-level passes over the chunks, so the
worker's capture thread holds the GIL for well under a millisecond a flush. Everything
made per flower (row ids, species names, the repeated per-answer columns) is made by the
worker's capture sink process from the spool table: :func:`capture_table` gives the rows of
the Parquet files (:data:`PARQUET_COLUMNS`), ``serving.capture_spool.answers_in`` the
answers of the prediction index.

Built from numpy buffers and Arrow compute kernels only: no Python object per flower, and
no ``pa.array``, which imports pandas (80 MiB per process) to inspect its argument.
"""

from __future__ import annotations

import json
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from training.answers import row_argmax
from training.schema import FEATURES

if TYPE_CHECKING:
    from serving.capture import Chunk

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
METAS_KEY = b"iris.metas"
"""Spool table metadata: the JSON list of :class:`Meta` the ``meta`` column points into."""


class Meta(NamedTuple):
    """What answers of one model, role and protocol share (one code per answer)."""

    model_name: str
    model_version: str
    role: str
    protocol: str
    classes: tuple[str, ...]


_FIELDS = attrgetter(
    "time", "base", "single", "rows", "proba", "latency_ms", *Meta._fields[:-1], "classes"
)


def spool_table(chunks: list[Chunk]):
    """One row per chunk: ``time``, ``answer_id``, ``single``, ``meta``, ``latency_ms``,
    and the lists ``inputs`` (4 per flower) and ``probabilities`` (one per class).

    Raises:
        ValueError: the chunks' models have different numbers of classes (a flush's
            probabilities share one width).
    """
    import pyarrow as pa

    n = len(chunks)
    times, bases, singles, rows, probas, latency, *meta_fields = zip(
        *map(_FIELDS, chunks), strict=True
    )
    keys = list(zip(*meta_fields, strict=True))
    codes = dict.fromkeys(keys)  # each (model, role, protocol, classes) once, in order
    for code, key in enumerate(codes):
        codes[key] = code
    meta = np.fromiter(map(codes.__getitem__, keys), np.int32, n)
    widths = {len(m[-1]) for m in codes}
    if len(widths) != 1:
        raise ValueError(f"answers of models with {sorted(widths)} classes in one flush")
    (width,) = widths
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, rows), np.int32, n), out=offsets[1:])
    columns = {
        "time": numeric_array(
            (np.array(times) * 1_000_000).astype(np.int64), pa.timestamp("us", tz="UTC")
        ),
        "answer_id": string_array(bases),
        "single": bool_array(np.array(singles, dtype=bool)),
        "meta": numeric_array(meta),
        "latency_ms": numeric_array(np.array(latency, dtype=np.float32)),
        "inputs": list_array(offsets * len(FEATURES), np.concatenate(rows, axis=None)),
        "probabilities": list_array(offsets * width, np.concatenate(probas, axis=None)),
    }
    metas = json.dumps([[*m[:-1], list(m[-1])] for m in codes])
    return pa.Table.from_arrays(
        list(columns.values()), names=list(columns), metadata={METAS_KEY: metas}
    )


class SpoolRows(NamedTuple):
    """A spool table's flowers: one entry per row of the Parquet files."""

    metas: list[Meta]
    answer: np.ndarray  # (rows,) index of each flower's answer in the spool table
    meta: np.ndarray  # (answers,) code of each answer into ``metas``
    starts: np.ndarray  # (answers + 1,) first flower of each answer, then the total
    inputs: np.ndarray  # (rows, 4) float32
    proba: np.ndarray  # (rows, classes) float32


def spool_rows(spool) -> SpoolRows:
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
    return SpoolRows(metas, answer, numpy_of(spool["meta"], np.int32), starts, inputs, proba)


def capture_table(spool):
    """The Parquet rows of a spool table, one per flower: :data:`PARQUET_COLUMNS`, then
    ``model_version`` (the files' partition). Flowers of one answer stay together, in
    order; a batch row's id is ``<answer id>-<row>``, a single flower's the answer's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = spool_rows(spool)
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
    species_index = lookup[meta, row_argmax(found.proba)] if total else meta
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


def numeric_array(values: np.ndarray, type_=None):
    """An Arrow array over a numpy array's buffer (its dtype's Arrow type by default)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    type_ = type_ or pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def bool_array(values: np.ndarray):
    import pyarrow as pa

    bits = np.packbits(values, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def list_array(offsets: np.ndarray, values: np.ndarray):
    """A list<float32> array: entry ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""
    import pyarrow as pa

    flat = numeric_array(np.asarray(values, dtype=np.float32))
    return pa.ListArray.from_arrays(numeric_array(offsets.astype(np.int32, copy=False)), flat)


def list_parts(column) -> tuple[np.ndarray, np.ndarray]:
    """A list<float32> column as (int64 offsets from 0, float32 values)."""
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    offsets = numpy_of(column.offsets, np.int32).astype(np.int64)
    values = numpy_of(column.values, np.float32)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def _dashes(n: int):
    """``n`` strings ``"-"``, the separator of a row id (an array, as the kernel needs)."""
    import pyarrow as pa

    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(b"-" * n))


def string_array(values: list[str] | tuple[str, ...]):
    """A UTF-8 Arrow array of Python strings: one join when they are ASCII (ids are)."""
    import pyarrow as pa

    joined = "".join(values)
    data = joined.encode()
    if len(data) == len(joined):  # ASCII: a string's length in bytes is its length
        lengths = np.fromiter(map(len, values), np.int32, len(values))
    else:
        encoded = [v.encode() for v in values]
        lengths = np.fromiter(map(len, encoded), np.int32, len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(data))


def numpy_of(array, dtype) -> np.ndarray:
    """A null-free primitive Arrow array (or chunked array) as numpy ``dtype``, read off
    its buffer: ``to_numpy`` imports pandas in this pyarrow."""
    if hasattr(array, "combine_chunks"):
        array = array.combine_chunks()
    dtype = np.dtype(dtype)
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize
    )
