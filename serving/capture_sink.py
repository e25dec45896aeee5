"""A worker's capture sink: the process that turns its spooled answers into Parquet files
and prediction-index rows, and scores them in shadow.

Each worker starts one (``python -m serving.capture_sink <worker pid>``, niced by
``IRIS_CAPTURE_SINK_NICE``) and writes one Arrow file per flush into ``<dir>/.spool``
(:mod:`serving.capture`). Encoding Parquet and inserting the index then costs the worker
nothing: no GIL held for tens of milliseconds a second in the process that answers, and
under full load the kernel gives the CPU to answering first.

A sink holds its worker's lock (``serving.capture_spool.owner_lock``) for life, and
takes its worker's spool files in order: index the answers (first, since feedback for
them waits on it), write the Parquet partitions (named after the spool file, so a retry
replaces rather than duplicates), delete the file, and last, from memory, score the
share its worker asks for with the challenger in shadow (``serving.shadow_scoring``). If
the index database fails, the file waits as ``*.unindexed`` (at most
``IRIS_CAPTURE_MAX_PENDING`` rows of them; beyond, the oldest are only logged: their
Parquet rows stay) and the database is tried again after ``INDEX_RETRY_S``, doubled after
each further failure up to ``INDEX_RETRY_MAX_S``, while Parquet writing goes on. An insert
the database does not answer within its bound (a frozen server cancels nothing) counts as
failed: the call runs on, on a thread of its own (``serving.db_calls``), and no other is
tried until it returns, so a frozen database stops neither the Parquet capture nor the
sink's exit. Once a minute a sink adopts the
files of any worker whose lock is free (its sink is gone; an adopted worker's
``*.unindexed`` files are thus retried once a minute), and sweeps retention. Lock files
are never deleted: an ``flock`` belongs to the file, and a new file under the old name
would let two sinks in.

The worker's stdin pipe is the only control: a byte means "new file", end of file means
"drain and exit" (a worker that exits, cleanly or killed, closes it), so SIGTERM sent to
the server's process group does not cut a drain short. Reports go back on stdout, one
``written N``, ``dropped N REASON`` or shadow line each, and become the worker's counters.

Over 250 lines (about 330): a pass's steps (index, shadow, write, delete, retry, adopt,
retention) share the drain's state and its error reporting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from serving.capture_files import CaptureFiles
from serving.capture_reports import NOT_WRITTEN, UNREADABLE
from serving.capture_spool import index_rows, owner_lock, parse_spool_name, read_spool, spool_files
from serving.capture_table import SpoolRows, capture_table, spool_rows
from serving.db_calls import BoundedCalls, answer_within
from serving.shadow_scoring import BEHIND_ROWS_SHARE, ShadowScorer, marker_files, marker_path
from training.answers import IndexRows
from training.logs import DistinctErrors, configure_logging

logger = logging.getLogger(__name__)

Report = Callable[[str, int | str], None]


INDEX_RETRY_S = 5.0
"""After a failed index insert, files are written to Parquet without trying the database
again for this long: a database that hangs (rather than refusing) must not slow the
Parquet capture down to one timeout per file."""

INDEX_RETRY_MAX_S = 60.0
"""The longest rest between tries after failures in a row: a database that stays
unreachable (each connect attempt waits its timeout) costs the Parquet capture a few
seconds a minute, not half its time."""


class Drain:
    """One pass over a worker's spool: index, write, delete; then the folder's upkeep."""

    def __init__(
        self,
        directory: Path,
        owner: int,
        *,
        index: Callable[[IndexRows], object] | None,  # FeedbackStore.index: skips shadow
        report: Report,
        max_pending_rows: int = 100_000,
        retention_days: int = 30,
        max_bytes: int = 1 << 30,
        retention_every_s: float = 60.0,
        shadow: ShadowScorer | None = None,
        index_wait_s: float = 15.0,
    ):
        self.spool = directory / ".spool"
        self.owner = owner
        self.index = index
        self.report = report
        self.max_pending_rows = max_pending_rows
        self.retention_every_s = retention_every_s
        self.shadow = shadow
        self.index_wait_s = index_wait_s
        self._index_calls = BoundedCalls("capture-index", threads=1)
        self._index_errors = DistinctErrors(logger, "Capture indexing works again")
        self._file_errors = DistinctErrors(logger, "Capture files are written again")
        self._index_retry_at = 0.0
        self._index_failures = 0  # in a row
        self.files = CaptureFiles(
            directory,
            retention_days,
            max_bytes,
            on_error=self._failed,
            on_dropped=lambda n: report("dropped", f"{n} {NOT_WRITTEN}"),
        )
        self._last_housekeeping = 0.0
        self._compacted_hour = int(time.time() // 3600)

    def once(self) -> int:
        """Process every spool file of the owner (and, now and then, of workers whose sink
        is gone); returns the rows written."""
        written = self._process_spool(self.owner)
        self._retry_unindexed(self.owner)
        if time.monotonic() - self._last_housekeeping > self.retention_every_s:
            self._last_housekeeping = time.monotonic()
            written += self._adopt_orphans()
            self.files.enforce_retention()
            if self.shadow is not None:
                self.shadow.keep_ban()
            self._sweep_partial_spools()
        hour = int(time.time() // 3600)
        if hour != self._compacted_hour:
            self._compacted_hour = hour
            try:
                self.files.compact(before=hour * 3600.0, pid=self.owner)
            except Exception as e:  # noqa: BLE001 - small files are only slower to read
                self._failed("Capture compaction failed", e)
        return written

    def _adopt_orphans(self) -> int:
        """Process the files of every other worker whose lock is free (its sink is gone:
        killed with its worker, or never restarted)."""
        owners = {parse_spool_name(p.name)[0] for p in spool_files(self.spool)}
        owners |= {parse_spool_name(p.name)[0] for p in spool_files(self.spool, unindexed=True)}
        written = 0
        for owner in sorted(owners - {self.owner}):
            lock = owner_lock(self.spool, owner, wait=False)
            if lock is None:  # its sink is alive and working
                continue
            with lock:
                logger.info("Capture sink of %d adopts the spool of worker %d", self.owner, owner)
                written += self._process_spool(owner)
                self._retry_unindexed(owner)
        return written

    def _process_spool(self, owner: int) -> int:
        """Process ``owner``'s spool files, oldest first; returns the rows written."""
        files = spool_files(self.spool, owner)
        sizes = [parse_spool_name(p.name)[2] for p in files]
        waiting, written = sum(sizes), 0
        for path, rows in zip(files, sizes, strict=True):
            waiting -= rows  # rows spooled after this file: a backlog skips its shadow
            behind = waiting > self.max_pending_rows * BEHIND_ROWS_SHARE
            written += self._process(path, owner, behind=behind)
        return written

    def _process(self, path: Path, owner: int, *, behind: bool) -> int:
        _, stem, rows, _ = parse_spool_name(path.name)
        try:
            spooled = read_spool(path)
            found = spool_rows(spooled)
            table = capture_table(spooled, found)
        except FileNotFoundError:  # processed meanwhile (an adopter of a reused PID)
            return 0
        except Exception as e:  # noqa: BLE001 - a damaged spool file is dropped, counted
            self._failed(f"Capture spool file {path.name} unreadable; {rows} rows dropped", e)
            self.report("dropped", f"{rows} {UNREADABLE}")
            path.unlink(missing_ok=True)
            return 0
        indexed = self._index(spooled, found, path.name)  # first: feedback waits on it
        written = self.files.write(table, stem)
        if written:
            self.report("written", written)
            self._file_errors.ok()
        if indexed:
            path.unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path.with_name(f"{path.name}.unindexed"))
            self._bound_unindexed(owner)
        # The shadow last, from memory, once the file is gone or waits only for the index:
        # a challenger that raises never holds the capture back, nor is a file retried
        # because of it.
        if self.shadow is not None:
            written += self.shadow.write(self.files, spooled, found, stem, behind=behind)
        return written

    def _index(self, spooled, found: SpoolRows, name: str) -> bool:
        """Index a spool table's answers; False if the database failed (or is resting
        after a failure) and the file must wait."""
        if self.index is None:
            return True
        if time.monotonic() < self._index_retry_at or self._index_calls.busy():
            return False  # resting after a failure, or the last insert still hangs
        try:
            answers = index_rows(spooled, found)
        except Exception as e:  # noqa: BLE001 - its Parquet rows go out all the same
            self._failed(f"Capture spool file {name}: answers unreadable, not indexed", e)
            return True
        try:
            self._index_calls.call(self.index_wait_s, self.index, answers)
        except TimeoutError:
            self._rest_index()
            self._index_errors.failed(
                logging.ERROR,
                "Capture indexing failed; the answers wait in the spool",
                TimeoutError(f"the database did not answer within {self.index_wait_s:g} s"),
            )
            return False
        except Exception as e:  # noqa: BLE001 - a database outage never stops capture
            self._rest_index()
            self._index_errors.failed(
                logging.ERROR, "Capture indexing failed; the answers wait in the spool", e
            )
            return False
        self._index_errors.ok()
        self._index_failures = 0
        return True

    def _rest_index(self) -> None:
        """No insert for ``INDEX_RETRY_S``, doubled for each failure in a row."""
        self._index_failures += 1
        rest = min(INDEX_RETRY_S * 2 ** (self._index_failures - 1), INDEX_RETRY_MAX_S)
        self._index_retry_at = time.monotonic() + rest

    def _retry_unindexed(self, owner: int) -> None:
        for path in spool_files(self.spool, owner, unindexed=True):
            try:
                spooled = read_spool(path)
                found = spool_rows(spooled)
            except OSError:  # gone, or a passing I/O error: the next pass tries again
                continue
            except Exception as e:  # noqa: BLE001 - damaged since: its Parquet rows are out
                self._failed(f"Capture spool file {path.name} unreadable; not indexed", e)
                path.unlink(missing_ok=True)
                continue
            if not self._index(spooled, found, path.name):
                return
            path.unlink(missing_ok=True)

    def _bound_unindexed(self, owner: int) -> None:
        """Keep at most ``max_pending_rows`` of ``owner``'s rows waiting for the index; the
        oldest beyond go (their Parquet rows stay: only feedback for them will be 404)."""
        waiting = spool_files(self.spool, owner, unindexed=True)
        total = sum(parse_spool_name(p.name)[2] for p in waiting)
        for path in waiting:
            if total <= self.max_pending_rows:
                break
            rows = parse_spool_name(path.name)[2]
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                logger.error("Capture index backlog full: %d answers will not be indexed", rows)
            total -= rows

    def _sweep_partial_spools(self) -> None:
        """Spool files a killed worker left half-written (``.<name>.tmp``), after an hour;
        and shadow markers and bans (``serving.shadow_scoring.marker_path``) of workers
        whose sink is gone, after an hour."""
        hour_ago = time.time() - 3600
        with contextlib.suppress(OSError):
            for stale in self.spool.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if stale.stat().st_mtime < hour_ago:
                        stale.unlink()
            for owner, marker in marker_files(self.spool):
                with contextlib.suppress(FileNotFoundError):
                    if marker.stat().st_mtime >= hour_ago:
                        continue
                    lock = owner_lock(self.spool, owner, wait=False)
                    if lock is not None:  # its sink is gone: nobody reads the verdict
                        with lock:
                            marker.unlink()

    def _failed(self, what: str, e: BaseException) -> None:
        self._file_errors.failed(logging.ERROR, what, e)


def main(argv: list[str] | None = None) -> int:
    from training.loop_store import FeedbackStore
    from training.settings import Settings

    (owner,) = argv if argv is not None else sys.argv[1:]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stop when the worker's pipe closes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_dir, "service.log")
    with contextlib.suppress(OSError):  # never below the worker's: only root may lower it
        own = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(own, settings.capture_sink_nice))
    store = FeedbackStore(settings.loop_url, statement_s=settings.db_statement_timeout_s)

    def report(kind: str, n: int | str) -> None:
        with contextlib.suppress(BrokenPipeError):  # the worker is gone: nobody counts
            sys.stdout.write(f"{kind} {n}\n")
            sys.stdout.flush()

    settings.capture_dir.joinpath(".spool").mkdir(parents=True, exist_ok=True)
    lock = owner_lock(settings.capture_dir / ".spool", int(owner), wait=True)  # held for life
    drain = Drain(
        settings.capture_dir,
        int(owner),
        index=store.index,
        report=report,
        max_pending_rows=settings.capture_max_pending,
        retention_days=settings.capture_retention_days,
        max_bytes=settings.capture_max_bytes,
        shadow=ShadowScorer(
            report, marker=marker_path(settings.capture_dir / ".spool", int(owner))
        ),
        index_wait_s=answer_within(settings),
    )
    while True:
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 65536):
            break  # the worker closed its end (stopped or died): drain and go
        try:
            drain.once()
        except Exception:  # never die with files waiting: the next pass tries again
            logger.exception("Capture sink pass failed")
    drain.once()
    lock.close()  # the file stays: deleting a lock file others may have open breaks flock
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
