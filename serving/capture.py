"""Capture every answered prediction, off the request path, into Parquet files.

A request hands the writer one :class:`Chunk` (all rows of one answer) and returns: the
hand-off is a deque append under a lock, never a wait and never an exception. A daemon
thread per worker process flushes every ``IRIS_CAPTURE_FLUSH_S`` seconds:

- to Parquet, partitioned Hive-style as
  ``<dir>/date=YYYY-MM-DD/model_version=V/part-<pid>-<seq>.parquet``. Each worker writes
  only files named with its own PID, each written to a temporary name and renamed when
  complete, so workers never touch each other's files and a reader never sees half a file.
  Once an hour each worker merges its own files of the past hour into one;
- to every extra sink given (the prediction index that feedback is checked against).

The queue is bounded (``IRIS_CAPTURE_MAX_PENDING`` rows): when the writer falls behind,
new chunks are dropped and counted (``iris_capture_dropped_total``), and answers go on.
A clean stop flushes what is pending; a hard kill loses at most one flush interval.
Retention removes day partitions older than ``IRIS_CAPTURE_RETENTION_DAYS`` and then the
oldest files while the folder is over ``IRIS_CAPTURE_MAX_BYTES``.

Read it all with one line of pandas: ``pd.read_parquet("var/captures")``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from training.loop_store import row_argmax
from training.schema import CHALLENGER, CHAMPION, FEATURES

logger = logging.getLogger(__name__)

ROLES = (CHAMPION, CHALLENGER, "shadow", "version")
DICTIONARY_COLUMNS = ["protocol", "model_name", "role", "species"]
"""Columns with a handful of values, dictionary-encoded in the files. The others (unique
ids, measurements) are not: trying a dictionary for them costs half the write time."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """The rows of one answer, as the model saw and answered them.

    Handing one over costs the same for 1 row as for 1,000: the rows' ids and species
    names are not built on the request path, only in the writer thread (``ids``,
    ``species``), from the answer's id and its probabilities.
    """

    time: float  # epoch seconds
    base: str  # the answer's prediction id; row i of a batch is ``<base>-<i>``
    single: bool  # one flower answered as such: its id is ``base`` itself
    rows: np.ndarray  # (n, 4) float32, FEATURES order
    proba: np.ndarray  # (n, classes); the served species is the argmax of each row
    classes: tuple[str, ...]  # the model's class order
    model_name: str
    model_version: str
    role: str  # champion, challenger (canary answer) or shadow (scored, not returned)
    protocol: str  # http, oip_rest, oip_grpc
    latency_ms: float

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return [self.base] if self.single else row_ids(self.base, len(self.rows))

    @property
    def species(self) -> list[str]:
        return [self.classes[i] for i in self.proba.argmax(axis=1)]


Sink = Callable[[list[Chunk]], None]


class CaptureWriter:
    """One per worker process: a bounded queue and the thread that drains it."""

    def __init__(
        self,
        directory: Path,
        *,
        flush_s: float = 1.0,
        max_pending_rows: int = 100_000,
        retention_days: int = 30,
        max_bytes: int = 1 << 30,
        retention_every_s: float = 60.0,
        sinks: Sequence[Sink] = (),
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ):
        self.directory = directory
        self.flush_s = flush_s
        self.max_pending_rows = max_pending_rows
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.retention_every_s = retention_every_s
        self.sinks = list(sinks)
        self.on_written = on_written
        self.on_dropped = on_dropped
        self._pending: deque[Chunk] = deque()
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seq = 0
        self._last_retention = 0.0
        self._sink_backlog: list[Chunk] = []
        self._compacted_hour = int(time.time() // 3600)
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="capture-writer", daemon=True)

    # -- request path ----------------------------------------------------------------

    def submit(self, chunk: Chunk) -> bool:
        """Queue a chunk; False (and counted) if the queue is full. Never blocks or raises."""
        n = len(chunk)
        with self._lock:
            if self._pending_rows + n > self.max_pending_rows or self._stop.is_set():
                accepted = False
            else:
                self._pending.append(chunk)
                self._pending_rows += n
                accepted = True
        if not accepted and self.on_dropped:
            self.on_dropped(n)
        return accepted

    # -- writer thread ---------------------------------------------------------------

    def start(self) -> CaptureWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, flush everything pending, and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._flush_logged()
        self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:  # never let the writer thread die: the next interval tries again
            logger.exception("Capture flush failed")

    def flush(self) -> int:
        """Write what is pending now; returns the number of rows written."""
        with self._lock:
            chunks = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
        if not chunks and not self._sink_backlog:
            return 0
        written = self._write_parquet(chunks)
        self._to_sinks(chunks)
        if self.on_written and written:
            self.on_written(written)
        hour = int(time.time() // 3600)
        if hour != self._compacted_hour:
            self._compacted_hour = hour
            try:
                self.compact(before=hour * 3600.0)
            except Exception as e:  # noqa: BLE001 - small files are only slower to read
                self._log_once("Capture compaction failed", e)
        if time.monotonic() - self._last_retention > self.retention_every_s:
            self._last_retention = time.monotonic()
            self.enforce_retention()
        return written

    def _to_sinks(self, chunks: list[Chunk]) -> None:
        """Hand chunks to every sink; on a failure keep them (bounded) for the next flush,
        so a database blip delays indexing instead of losing it."""
        if not self.sinks:
            return
        batch = self._sink_backlog + chunks
        try:
            for sink in self.sinks:
                sink(batch)
        except Exception as e:  # noqa: BLE001 - a sink's outage never stops capture
            self._log_once(f"Capture sink failed; {len(batch)} chunk(s) kept for retry", e)
            while sum(len(c) for c in batch) > self.max_pending_rows and batch:
                dropped = batch.pop(0)
                if self.on_dropped:
                    self.on_dropped(len(dropped))
            self._sink_backlog = batch
            return
        self._sink_backlog = []
        if self._last_error is not None:
            logger.info("Capture sinks are working again")
            self._last_error = None

    def _log_once(self, what: str, e: BaseException) -> None:
        message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if message != self._last_error:
            logger.error("%s: %s", what, message)
            logger.debug("Capture failure", exc_info=True)
        self._last_error = message

    def _write_parquet(self, chunks: list[Chunk]) -> int:
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
                self._log_once(f"Capture file not written; {rows} answers dropped", e)
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
                self._log_once(f"Capture compaction of {folder.name} failed", e)
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


def new_id() -> str:
    """A prediction id: 128 random bits as hex (the request's; rows add ``-<index>``)."""
    return os.urandom(16).hex()


def row_ids(base: str, n: int) -> list[str]:
    """One id per row of a batch: ``<base>-<row>``."""
    return [f"{base}-{i}" for i in range(n)]
