"""The columns of captured answers: one Arrow table per flush, one row per prediction.

A worker builds the table from its queued chunks (:func:`capture_table`) and spools it;
the capture sink process (``serving.capture_sink``) writes its Parquet columns
(:data:`PARQUET_COLUMNS`) and indexes its answers from the spool-only columns. Built from
numpy buffers and Arrow compute kernels only: no Python object per row (a 1,000-row answer
is a few array operations, not 1,000 strings made under the GIL), and no ``pa.array``,
which imports pandas (80 MiB per worker) to inspect its argument.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

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
SPOOL_COLUMNS = ("model_version", "answer", "answer_id", "single", "classes")
"""Only in the spool: what indexing an answer needs (its id, rows and class order)."""
DICTIONARY_COLUMNS = ["protocol", "model_name", "role", "species"]
"""Columns with a handful of values, dictionary-encoded in the files. The others (unique
ids, measurements) are not: trying a dictionary for them costs half the write time."""


def capture_table(chunks: list[Chunk]):
    """The spool table of ``chunks``: :data:`PARQUET_COLUMNS` then :data:`SPOOL_COLUMNS`.

    Rows of one chunk stay together, in order; ``answer`` numbers the chunks.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(chunks), dtype=np.int32), counts)  # chunk of each row
    starts = np.cumsum(counts) - counts
    row_in_chunk = np.arange(total) - starts[owner]
    rows = np.concatenate([c.rows for c in chunks]).astype(np.float32, copy=False)
    proba = np.concatenate([c.proba for c in chunks]).astype(np.float32, copy=False)

    def per_chunk(values: list[str]):  # one value per chunk, repeated over its rows
        return pc.take(string_array(values), numeric_array(owner))

    single = np.fromiter((c.single for c in chunks), dtype=bool, count=len(chunks))[owner]
    base = per_chunk([c.base for c in chunks])
    suffixed = pc.binary_join_element_wise(
        base, pc.cast(numeric_array(row_in_chunk), pa.string()), _dashes(total)
    )
    ids = pc.if_else(bool_array(single), base, suffixed)

    # Species: the argmax of each row's probabilities (exactly how the served name was
    # chosen), looked up in one list of every class name of the group.
    names: list[str] = []
    tables: dict[tuple[str, ...], int] = {}  # class order -> its row in ``lookup``
    lookup: list[list[int]] = []
    which = np.empty(len(chunks), dtype=np.intp)
    for k, c in enumerate(chunks):
        found = tables.get(c.classes)
        if found is None:
            found = tables[c.classes] = len(lookup)
            lookup.append([_index(names, n) for n in c.classes])
        which[k] = found
    width = max(len(t) for t in lookup)
    table = np.array([t + [0] * (width - len(t)) for t in lookup], dtype=np.int32)
    species_index = table[which[owner], row_argmax(proba)]
    orders = [json.dumps(list(classes)) for classes in tables]

    micros = np.fromiter((int(c.time * 1_000_000) for c in chunks), np.int64, len(chunks))
    latency = np.fromiter((c.latency_ms for c in chunks), np.float32, len(chunks))
    columns = {
        "time": numeric_array(micros[owner], pa.timestamp("us", tz="UTC")),
        "prediction_id": ids,
        "protocol": per_chunk([c.protocol for c in chunks]),
        "model_name": per_chunk([c.model_name for c in chunks]),
        "role": per_chunk([c.role for c in chunks]),
    }
    for i, name in enumerate(FEATURES):
        columns[name] = numeric_array(rows[:, i])
    columns["species"] = pc.take(string_array(names), numeric_array(species_index))
    columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
        numeric_array(proba.reshape(-1)), proba.shape[1]
    )
    columns["latency_ms"] = numeric_array(latency[owner])
    columns["model_version"] = per_chunk([c.model_version for c in chunks])
    columns["answer"] = numeric_array(owner)
    columns["answer_id"] = base
    columns["single"] = bool_array(single)
    columns["classes"] = pc.take(string_array(orders), numeric_array(which[owner].astype(np.int32)))
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


def _dashes(n: int):
    """``n`` strings ``"-"``, the separator of a row id (an array, as the kernel needs)."""
    import pyarrow as pa

    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(b"-" * n))


def string_array(values: list[str]):
    """A UTF-8 Arrow array of a few Python strings."""
    import pyarrow as pa

    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets), data)


def numpy_of(array, dtype) -> np.ndarray:
    """A null-free primitive Arrow array (or chunked array) as numpy ``dtype``, read off
    its buffer: ``to_numpy`` imports pandas in this pyarrow."""
    if hasattr(array, "combine_chunks"):
        array = array.combine_chunks()
    dtype = np.dtype(dtype)
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize
    )
