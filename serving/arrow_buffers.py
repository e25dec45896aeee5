"""Arrow arrays over numpy buffers, and back, without pandas.

``pa.array`` inspects its argument and imports pandas to do it (80 MiB in every worker and
capture sink), and so do ``to_numpy`` and comparing a column with a Python ``str``. These
build arrays from buffers, which costs no Python object per value either.
"""

from __future__ import annotations

import numpy as np


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
