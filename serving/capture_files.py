"""The capture's files: Parquet partitions written, compacted hourly, and kept within limits.

:class:`CaptureFiles` is what the capture writer thread (``serving.capture``) calls at each
flush. Files are named with the writing process's PID, written under a temporary name and
renamed when complete, so workers never touch each other's files and a reader never sees
half a file. Columns are built from numpy buffers and Arrow kernels only, so a worker never
imports pandas.

A little over 250 lines: writing, hourly compaction and retention share the file naming;
most of the rest is the column builders, one small function per Arrow type.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.answers import row_argmax
from training.schema import FEATURES

if TYPE_CHECKING:
    from serving.capture import Chunk

DICTIONARY_COLUMNS = ["protocol", "model_name", "role", "species"]


class CaptureFiles:
    """One process's view of the capture folder: its own files, and retention for all."""

    def __init__(
        self,
        directory: Path,
        retention_days: int,
        max_bytes: int,
        *,
        on_error: Callable[[str, BaseException], None],
        on_dropped: Callable[[int], None] | None = None,
    ):
        self.directory = directory
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.on_error = on_error
        self.on_dropped = on_dropped
        self._seq = 0

    def write(self, chunks: list[Chunk]) -> int:
        """Write chunks as one file per (day, version) partition; returns rows written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not chunks:
            return 0
        groups: dict[tuple[str, str], list[Chunk]] = {}
        for chunk in chunks:
            day = datetime.fromtimestamp(chunk.time, UTC).strftime("%Y-%m-%d")
            groups.setdefault((day, chunk.model_version), []).append(chunk)
        total = 0
        for (day, version), group in groups.items():
            rows = sum(len(c) for c in group)
            folder = self.directory / f"date={day}" / f"model_version={version}"
            self._seq += 1
            name = f"part-{os.getpid()}-{int(time.time() * 1000)}-{self._seq:06d}.parquet"
            partial = folder / f".{name}.tmp"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                columns = _columns(group)
                table = pa.Table.from_arrays(list(columns.values()), names=list(columns))
                pq.write_table(table, partial, use_dictionary=DICTIONARY_COLUMNS)
                os.replace(partial, folder / name)
            except Exception as e:  # noqa: BLE001 - disk full, permissions: counted, not raised
                with contextlib.suppress(OSError):
                    partial.unlink(missing_ok=True)
                self.on_error(f"Capture file not written; {rows} answers dropped", e)
                if self.on_dropped:
                    self.on_dropped(rows)
                continue
            total += rows
        return total

    def compact(self, before: float) -> int:
        """Merge this process's files written before ``before`` into one file per partition.

        A flush every second makes thousands of small files an hour; once an hour each
        worker rewrites its own finished ones (never another process's) as one file,
        written under a temporary name and renamed before the small ones are deleted.

        Returns:
            The number of small files merged away.
        """
        merged = 0
        pid = os.getpid()
        for folder in self.directory.glob("date=*/model_version=*"):
            try:
                merged += self._compact_folder(folder, pid, before)
            except Exception as e:  # noqa: BLE001 - this folder stays as it is; others go on
                self.on_error(f"Capture compaction of {folder.name} failed", e)
        return merged

    def _compact_folder(self, folder: Path, pid: int, before: float) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        small = []
        for p in folder.glob(f"part-{pid}-*.parquet"):
            with contextlib.suppress(FileNotFoundError):  # retention removed it meanwhile
                if not p.name.endswith("-h.parquet") and p.stat().st_mtime < before:
                    small.append(p)
        if len(small) < 2:
            return 0
        # ParquetFile.read, unlike pq.read_table, does not import pandas into the worker.
        table = pa.concat_tables(pq.ParquetFile(p).read() for p in sorted(small))
        self._seq += 1
        name = f"part-{pid}-{int(time.time() * 1000)}-{self._seq:06d}-h.parquet"
        partial = folder / f".{name}.tmp"
        try:
            pq.write_table(table, partial)
            os.replace(partial, folder / name)
        finally:
            partial.unlink(missing_ok=True)
        # A reader listing files right now may see rows twice (the merged file and a small
        # one not yet removed): readers that need exact counts drop duplicate prediction ids.
        for p in small:
            p.unlink(missing_ok=True)
        return len(small)

    def enforce_retention(self, now: float | None = None) -> list[Path]:
        """Delete day partitions past retention, then oldest files over the size cap."""
        removed: list[Path] = []
        today = datetime.fromtimestamp(now if now is not None else time.time(), UTC).date()
        for day_dir in sorted(self.directory.glob("date=*")):
            with contextlib.suppress(ValueError):
                day = datetime.strptime(day_dir.name[5:], "%Y-%m-%d").date()
                if (today - day).days > self.retention_days:
                    shutil.rmtree(day_dir, ignore_errors=True)
                    removed.append(day_dir)
        for stale in self.directory.glob("date=*/model_version=*/.part-*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # a write that died half-way
                if stale.stat().st_mtime < time.time() - 3600:
                    stale.unlink()
        files = []
        for path in self.directory.glob("date=*/model_version=*/part-*.parquet"):
            with contextlib.suppress(FileNotFoundError):  # another worker removed it
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        size = sum(f[1] for f in files)
        for _, nbytes, path in sorted(files):
            if size <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
            size -= nbytes
        return removed


def _columns(chunks: list[Chunk]) -> dict:
    """Column arrays of a group of chunks, one row per captured prediction.

    Built from numpy buffers and Arrow compute kernels only: no Python object per row
    (a 1,000-row answer is a few array operations, not 1,000 strings made under the GIL),
    and no ``pa.array``, which imports pandas (80 MiB per worker) to inspect its argument.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(chunks)), counts)  # chunk of each row
    starts = np.cumsum(counts) - counts
    row_in_chunk = np.arange(total) - starts[owner]
    rows = np.concatenate([c.rows for c in chunks]).astype(np.float32, copy=False)
    proba = np.concatenate([c.proba for c in chunks]).astype(np.float32, copy=False)

    def per_chunk(values: list[str]):  # one value per chunk, repeated over its rows
        return pc.take(_strings(values), _numeric(owner))

    single = np.fromiter((c.single for c in chunks), dtype=bool, count=len(chunks))[owner]
    base = per_chunk([c.base for c in chunks])
    suffixed = pc.binary_join_element_wise(
        base, pc.cast(_numeric(row_in_chunk), pa.string()), _dashes(total)
    )
    ids = pc.if_else(_bools(single), base, suffixed)

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

    micros = np.fromiter((int(c.time * 1_000_000) for c in chunks), np.int64, len(chunks))
    latency = np.fromiter((c.latency_ms for c in chunks), np.float32, len(chunks))
    columns = {
        "time": _numeric(micros[owner], pa.timestamp("us", tz="UTC")),
        "prediction_id": ids,
        "protocol": per_chunk([c.protocol for c in chunks]),
        "model_name": per_chunk([c.model_name for c in chunks]),
        "role": per_chunk([c.role for c in chunks]),
    }
    for i, name in enumerate(FEATURES):
        columns[name] = _numeric(rows[:, i])
    columns["species"] = pc.take(_strings(names), _numeric(species_index))
    columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
        _numeric(proba.reshape(-1)), proba.shape[1]
    )
    columns["latency_ms"] = _numeric(latency[owner])
    return columns


def _index(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _numeric(values: np.ndarray, type_=None):
    """An Arrow array over a numpy array's buffer (its dtype's Arrow type by default)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    type_ = type_ or pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def _bools(values: np.ndarray):
    import pyarrow as pa

    bits = np.packbits(values, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def _dashes(n: int):
    """``n`` strings ``"-"``, the separator of a row id (an array, as the kernel needs)."""
    import pyarrow as pa

    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(b"-" * n))


def _strings(values: list[str]):
    """A UTF-8 Arrow array of a few Python strings."""
    import pyarrow as pa

    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets), data)
