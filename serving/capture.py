"""Capture every answered prediction, off the request path, into Parquet files.

A request hands the writer one :class:`Chunk` (all rows of one answer) and returns: the
hand-off copies it into preallocated arrays under a lock (so the request's own objects
are freed at once), never a wait and never an exception. A daemon
thread per worker process wakes every ``IRIS_CAPTURE_FLUSH_S`` seconds and spools what
is queued as one Arrow file (``<dir>/.spool``, written under a temporary name and renamed);
the worker's own capture sink process (``serving.capture_sink``) writes it to Parquet,
partitioned Hive-style as ``<dir>/date=YYYY-MM-DD/model_version=V/part-<pid>-….parquet``,
and indexes it for feedback, and scores a share of its champion answers with the
challenger in shadow (``serving.shadow_scoring``). The worker thus only copies buffers:
Parquet encoding, database inserts and shadow scores never hold its GIL, and the sink
runs niced so answers come first.

The queue is bounded (``IRIS_CAPTURE_MAX_PENDING`` rows, queued plus spooled and not yet
written): when the sink falls behind, new chunks are dropped and counted
(``iris_capture_dropped_total``, by reason: ``serving.capture_reports``), and answers go
on. A clean stop spools what is pending and waits for the sink to write it; a hard kill of
the worker loses at most one flush interval (the sink sees its pipe close and writes what
was spooled). A sink that dies is restarted; one stuck in a challenger's model for
``STALL_S`` (its shadow marker says so) is killed, then restarted.

Read it all with one line of pandas: ``pd.read_parquet("var/captures")``.

Over 250 lines (about 380): the queue, the writer thread and the supervision of the
sink process (start, restart, kill when hung, its reports) share the writer's state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.capture_columns import AnswerColumns
from serving.capture_reports import NOT_SPOOLED, QUEUE_FULL, STOPPING, drop_reason
from serving.capture_spool import pending_rows, write_spool
from serving.child_env import capture_sink_env
from serving.shadow_scoring import TARGET_KEY, busy_since, count, forget, marker_path
from training.logs import DistinctErrors, one_line
from training.settings import PROJECT_DIR, Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    """The rows of one answer, as the model saw and answered them.

    Handing one over costs the same for 1 row as for 1,000: the rows' ids and species
    names are built neither on the request path nor in the worker, only by its capture
    sink, from the answer's id and its probabilities (``ids`` and ``species`` here say
    what they will be).
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


class CaptureWriter:
    """One per worker process: a bounded queue, the thread that spools it, and the sink
    process that writes the spool (started by :meth:`start` when ``sink_env`` is given;
    without one, something else drains the spool, as the unit tests do in-process)."""

    RESTART_S = 10.0
    """A sink that died is restarted at the next flush, at most once per this long."""
    STALL_S = 60.0
    """A sink whose shadow marker (``serving.shadow_scoring.marker_path``) is this old has
    been loading or calling the challenger that long (a call takes milliseconds, a load a
    second or two): it is taken for hung, killed, and restarted at the next flush; its
    next sink no longer uses that challenger."""

    def __init__(
        self,
        directory: Path,
        *,
        flush_s: float = 1.0,
        max_pending_rows: int = 100_000,
        sink_env: dict[str, str] | None = None,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int, str], None] | None = None,
        shadow: Callable[[], dict | None] | None = None,
        on_shadow: Callable[[str, list[str]], None] | None = None,
    ):
        self.directory = directory
        self.spool = directory / ".spool"
        self.flush_s = flush_s
        self.max_pending_rows = max_pending_rows
        self.sink_env = sink_env
        self.on_written = on_written
        self.on_dropped = on_dropped
        self.shadow = shadow  # what the sink scores in shadow (serving.shadow_scoring.target)
        self.on_shadow = on_shadow  # a sink's shadow report: kind, fields
        self._queue = AnswerColumns()  # what requests add to
        self._spare = AnswerColumns()  # what the next flush swaps in
        self._refusals: set[str] = set()
        self._pending_rows = 0
        self._spooled_rows = 0  # spooled and not yet written, as of the last flush
        self._errors = DistinctErrors(logger, "Capture spooling works again")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seq = 0
        self._sink: subprocess.Popen | None = None
        self._sink_started = 0.0
        self._reports: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._loop, name="capture-writer", daemon=True)

    # -- request path ----------------------------------------------------------------

    def submit(self, chunk: Chunk) -> bool:
        """Queue one answer; False (and counted) if the queue is full. Never blocks or
        raises."""
        n = len(chunk)
        refused: str | None = None
        reason = QUEUE_FULL
        with self._lock:
            held = self._pending_rows + self._spooled_rows + n
            if self._stop.is_set():
                accepted, reason = False, STOPPING
            elif held > self.max_pending_rows:
                accepted = False
            else:
                try:
                    refused = self._queue.add(chunk)
                except Exception as e:  # noqa: BLE001 - e.g. no memory to grow: counted
                    refused = one_line(e)
                accepted = refused is None
                if accepted:
                    self._pending_rows += n
                else:
                    reason = NOT_SPOOLED
        if not accepted:
            self._dropped(n, reason)
            if refused is not None and refused not in self._refusals:
                self._refusals.add(refused)  # each reason logged once
                logger.error("Capture drops answers: %s", refused)
        return accepted

    # -- writer thread ---------------------------------------------------------------

    def start(self) -> CaptureWriter:
        """Start the sink and the writer thread. A capture folder that cannot be made is
        logged and its answers counted as dropped at each flush: the worker serves on."""
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._errors.failed(logging.ERROR, f"Capture folder {self.spool} unusable", e)
        forget(marker_path(self.spool, os.getpid()))  # an old worker's, if the pid is reused
        self._start_sink()
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, spool everything pending, and wait for the sink to write it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self.flush()
        sink, self._sink = self._sink, None
        if sink is not None:
            with contextlib.suppress(OSError):  # a sink that died: nothing to tell it
                sink.stdin.close()  # the sink drains the spool and exits
            try:
                sink.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.error(
                    "Capture sink %d still writing after %.0f s; left to it", sink.pid, timeout
                )
        for reader in self._reports:
            reader.join(1.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._flush_logged()
        self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - the thread never dies; counted as dropped
            self._errors.failed(logging.ERROR, "Capture spooling failed", e)
        else:
            self._errors.ok()

    def flush(self) -> int:
        """Spool what is pending now; returns the number of rows spooled."""
        on_disk = pending_rows(self.spool, os.getpid())  # the sink only ever lowers it
        self._kill_hung_sink()
        if self._sink is not None and self._sink.poll() is not None:
            self._restart_sink()
        with self._lock:
            queue, self._queue = self._queue, self._spare
            rows = self._pending_rows
            self._pending_rows = 0
            self._spooled_rows = on_disk + rows  # rows being spooled count from now on
        try:
            if not len(queue):
                return 0
            if on_disk + rows > self.max_pending_rows:
                # The sink is behind: what it has not written bounds us.
                self._give_back(rows, QUEUE_FULL)
                return 0
            try:
                self._spool(queue.table(self._shadow_metadata()), rows)
            except Exception:
                self._give_back(rows, NOT_SPOOLED)
                raise
            return rows
        finally:
            queue.clear()
            self._spare = queue

    def _shadow_metadata(self) -> dict[bytes, bytes] | None:
        """The spool file's shadow request for the sink: the challenger held now, if any."""
        wanted = self.shadow() if self.shadow else None
        return None if wanted is None else {TARGET_KEY: json.dumps(wanted).encode()}

    def _give_back(self, rows: int, reason: str) -> None:
        """Rows that were taken from the queue and not spooled: uncounted, and dropped."""
        with self._lock:
            self._spooled_rows -= rows
        self._dropped(rows, reason)

    def _spool(self, table, rows: int) -> None:
        self._seq += 1
        write_spool(self.spool, table, os.getpid(), self._seq, rows)
        sink = self._sink  # close() may clear it meanwhile
        if sink is not None and not sink.stdin.closed:
            # One byte wakes the sink; a full pipe (a sink stuck on its database) already
            # holds plenty, and a dead sink is restarted at the next flush.
            with contextlib.suppress(OSError, ValueError):
                os.write(sink.stdin.fileno(), b"\n")

    # -- the sink process ------------------------------------------------------------

    def _start_sink(self) -> None:
        if self.sink_env is None:
            return
        self._sink_started = time.monotonic()
        self._sink = subprocess.Popen(
            [sys.executable, "-m", "serving.capture_sink", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=PROJECT_DIR,
            env=self.sink_env,
        )
        os.set_blocking(self._sink.stdin.fileno(), False)  # never wait on a stuck sink
        reader = threading.Thread(
            target=self._read_reports, args=(self._sink,), name="capture-reports", daemon=True
        )
        reader.start()
        self._reports = [r for r in self._reports if r.is_alive()] + [reader]

    def _kill_hung_sink(self) -> None:
        """Kill a sink stuck in a challenger's model for ``STALL_S``; the next flush
        restarts it."""
        sink = self._sink
        if sink is None or sink.poll() is not None:
            return
        since = busy_since(marker_path(self.spool, os.getpid()))
        if since is None or since < self._sink_started:  # none, or a dead sink's
            return
        busy_s = time.monotonic() - since
        if busy_s < self.STALL_S:
            return
        logger.error(
            "Capture sink %d has been in the shadow challenger for %.0f s; killing it (its "
            "next sink no longer uses that challenger)",
            sink.pid,
            busy_s,
        )
        sink.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sink.wait(5)

    def _restart_sink(self) -> None:
        if time.monotonic() - self._sink_started < self.RESTART_S:
            return
        logger.error("Capture sink exited with %s; starting a new one", self._sink.returncode)
        with contextlib.suppress(OSError):
            self._sink.stdin.close()
        self._start_sink()

    def _read_reports(self, sink: subprocess.Popen) -> None:
        """Turn the sink's report lines (``written N``, ``dropped N REASON``, and the
        shadow's, ``serving.shadow_scoring.count``) into the worker's counters."""
        with sink.stdout:
            for line in sink.stdout:
                kind, *fields = line.decode(errors="replace").split() or [""]
                with contextlib.suppress(ValueError, IndexError):
                    if kind == "written" and self.on_written:
                        self.on_written(int(fields[0]))
                    elif kind == "dropped":
                        self._dropped(int(fields[0]), drop_reason(fields[1:]))
                    elif kind.startswith("shadow") and self.on_shadow:
                        self.on_shadow(kind, fields)

    def _dropped(self, n: int, reason: str) -> None:
        if self.on_dropped:
            self.on_dropped(n, reason)


def new_id() -> str:
    """A prediction id (the request's; rows add ``-<index>``): a UUIDv7 (RFC 9562) as 32 hex
    digits, its milliseconds since the epoch first, then 74 random bits.

    Time first, so ids of one moment sort together: the prediction index's primary key
    then grows at its end, as a log does. With 128 random bits, each insert lands on a
    random page of an index that grows with every answer kept (30 days of them by
    default); measured with SQLite, an insert cost 13 µs of CPU at 50,000 answers held and
    30 µs at 400,000, against a steady 6-8 µs for time-ordered ids
    (``python -m benchmarks.index_keys``; benchmarks/results/index-keys.txt).
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return f"{value & _UUID7_CLEAR | _UUID7_SET:032x}"


_UUID7_CLEAR = ~(0xF << 76 | 0x3 << 62)  # the version and variant bits
_UUID7_SET = 0x7 << 76 | 0x2 << 62  # version 7, variant 10 (RFC 9562)


def row_ids(base: str, n: int) -> list[str]:
    """One id per row of a batch: ``<base>-<row>``."""
    return [f"{base}-{i}" for i in range(n)]


def capture_writer(
    settings: Settings, metrics, shadow: Callable[[], dict | None] | None = None
) -> CaptureWriter:
    """The writer a worker runs, its sink process set up from the same settings;
    ``shadow`` names what its sink scores in shadow (``serving.shadow_scoring``)."""
    return CaptureWriter(
        settings.capture_dir,
        flush_s=settings.capture_flush_s,
        max_pending_rows=settings.capture_max_pending,
        sink_env=capture_sink_env(settings),
        on_written=metrics.captured.inc,
        on_dropped=lambda n, reason: metrics.capture_dropped.labels(reason=reason).inc(n),
        shadow=shadow,
        on_shadow=lambda kind, fields: count(metrics, kind, fields),
    )
