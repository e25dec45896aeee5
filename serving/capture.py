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

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.capture_files import CaptureFiles
from training.answers import answers_of
from training.logs import DistinctErrors
from training.loop_store import FeedbackStore
from training.schema import CHALLENGER, CHAMPION, SHADOW
from training.settings import Settings

logger = logging.getLogger(__name__)

ROLES = (CHAMPION, CHALLENGER, SHADOW, "version")
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
        self._errors = DistinctErrors(logger, "Capture sinks are working again")
        self.files = CaptureFiles(
            directory, retention_days, max_bytes, on_error=self._log_once, on_dropped=on_dropped
        )
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
        written = self.files.write(chunks)
        self._to_sinks(chunks)
        if self.on_written and written:
            self.on_written(written)
        hour = int(time.time() // 3600)
        if hour != self._compacted_hour:
            self._compacted_hour = hour
            try:
                self.files.compact(before=hour * 3600.0)
            except Exception as e:  # noqa: BLE001 - small files are only slower to read
                self._log_once("Capture compaction failed", e)
        if time.monotonic() - self._last_retention > self.retention_every_s:
            self._last_retention = time.monotonic()
            self.files.enforce_retention()
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
        self._errors.ok()

    def _log_once(self, what: str, e: BaseException) -> None:
        self._errors.failed(logging.ERROR, what, e)


def new_id() -> str:
    """A prediction id: 128 random bits as hex (the request's; rows add ``-<index>``)."""
    return os.urandom(16).hex()


def row_ids(base: str, n: int) -> list[str]:
    """One id per row of a batch: ``<base>-<row>``."""
    return [f"{base}-{i}" for i in range(n)]


def capture_writer(settings: Settings, metrics, store: FeedbackStore) -> CaptureWriter:
    """The writer a worker runs: its settings, its metrics, and the loop store as its sink."""

    def index(chunks: list[Chunk]) -> None:
        store.index(answers_of(chunks))

    return CaptureWriter(
        settings.capture_dir,
        flush_s=settings.capture_flush_s,
        max_pending_rows=settings.capture_max_pending,
        retention_days=settings.capture_retention_days,
        max_bytes=settings.capture_max_bytes,
        sinks=[index],
        on_written=metrics.captured.inc,
        on_dropped=metrics.capture_dropped.inc,
    )
