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

from training.schema import CHALLENGER, CHAMPION, FEATURES

logger = logging.getLogger(__name__)

ROLES = (CHAMPION, CHALLENGER, "shadow", "version")


@dataclass(frozen=True, slots=True)
class Chunk:
    """The rows of one answer, as the model saw and answered them."""

    time: float  # epoch seconds
    ids: Sequence[str]
    rows: np.ndarray  # (n, 4) float32, FEATURES order
    species: Sequence[str]
    proba: np.ndarray  # (n, classes)
    model_name: str
    model_version: str
    role: str  # champion, challenger (canary answer) or shadow (scored, not returned)
    protocol: str  # http, oip_rest, oip_grpc
    latency_ms: float

    def __len__(self) -> int:
        return len(self.ids)


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
                pq.write_table(pa.table(_columns(group)), partial)
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
        table = pa.concat_tables(pq.read_table(p) for p in sorted(small))
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
    """Column arrays of a group of chunks, one row per captured prediction."""
    import pyarrow as pa

    rows = np.concatenate([c.rows for c in chunks]).astype(np.float32, copy=False)
    proba = np.concatenate([c.proba for c in chunks]).astype(np.float32, copy=False)
    counts = [len(c) for c in chunks]

    def repeat(values: list) -> list:
        return [v for v, n in zip(values, counts, strict=True) for _ in range(n)]

    times = np.repeat(
        np.array([int(c.time * 1_000_000) for c in chunks], dtype="int64"), counts
    ).astype("datetime64[us]")
    columns = {
        "time": pa.array(times, type=pa.timestamp("us", tz="UTC")),
        "prediction_id": pa.array([i for c in chunks for i in c.ids], type=pa.string()),
        "protocol": pa.array(repeat([c.protocol for c in chunks]), type=pa.string()),
        "model_name": pa.array(repeat([c.model_name for c in chunks]), type=pa.string()),
        "role": pa.array(repeat([c.role for c in chunks]), type=pa.string()),
    }
    for i, name in enumerate(FEATURES):
        columns[name] = pa.array(rows[:, i])
    columns["species"] = pa.array([s for c in chunks for s in c.species], type=pa.string())
    columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
        pa.array(proba.reshape(-1)), proba.shape[1]
    )
    columns["latency_ms"] = pa.array(repeat([c.latency_ms for c in chunks]), type=pa.float32())
    return columns


def new_id() -> str:
    """A prediction id: 128 random bits as hex (the request's; rows add ``-<index>``)."""
    return os.urandom(16).hex()


def row_ids(base: str, n: int) -> list[str]:
    """One id per row of a batch: ``<base>-<row>``."""
    return [f"{base}-{i}" for i in range(n)]
