"""A worker's capture sink: the process that turns its spooled answers into Parquet files
and prediction-index rows.

Each worker starts one (``python -m serving.capture_sink <worker pid>``, niced by
``IRIS_CAPTURE_SINK_NICE``) and writes one Arrow file per flush into ``<dir>/.spool``
(:mod:`serving.capture`). Encoding Parquet and inserting the index then costs the worker
nothing: no GIL held for tens of milliseconds a second in the process that answers, and
under full load the kernel gives the CPU to answering first.

For each spool file, in order: claim it (a rename, so two sinks never process one file),
index its answers (first, since feedback for them waits on it), write its Parquet
partitions (named after the spool file, so a retry replaces rather than duplicates),
delete it. If the index database is unreachable, the file
waits as ``*.unindexed`` (bounded like the queue; the oldest beyond the bound are dropped
and counted) and is retried every pass. Files of a worker or sink that died are adopted.

The worker's stdin pipe is the only control: a byte means "new file", end of file means
"drain and exit" (a worker that exits, cleanly or killed, closes it), so SIGTERM sent to
the server's process group does not cut a drain short. Reports go back on stdout, one
``written N`` or ``dropped N`` line each, and become the worker's capture counters.
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
from serving.capture_spool import alive, answers_in, parse_spool_name, read_spool
from training.answers import Answer
from training.logs import DistinctErrors, configure_logging

logger = logging.getLogger(__name__)

Report = Callable[[str, int], None]


class Drain:
    """One pass over the spool: write, index, delete; then the folder's housekeeping."""

    def __init__(
        self,
        directory: Path,
        owner: int,
        *,
        index: Callable[[list[Answer]], object] | None,
        report: Report,
        max_pending_rows: int = 100_000,
        retention_days: int = 30,
        max_bytes: int = 1 << 30,
        retention_every_s: float = 60.0,
    ):
        self.spool = directory / ".spool"
        self.owner = owner
        self.index = index
        self.report = report
        self.max_pending_rows = max_pending_rows
        self.retention_every_s = retention_every_s
        self._errors = DistinctErrors(logger, "Capture indexing works again")
        self.files = CaptureFiles(
            directory,
            retention_days,
            max_bytes,
            on_error=self._failed,
            on_dropped=lambda n: report("dropped", n),
        )
        self._last_housekeeping = 0.0
        self._compacted_hour = int(time.time() // 3600)

    def once(self) -> int:
        """Process every spool file of ours (and orphans); returns the rows written."""
        written = 0
        for path in self._files(orphans=self._housekeeping_due()):
            written += self._process(path)
        self._retry_unindexed()
        if self._housekeeping_due():
            self._last_housekeeping = time.monotonic()
            self.files.enforce_retention()
        hour = int(time.time() // 3600)
        if hour != self._compacted_hour:
            self._compacted_hour = hour
            try:
                self.files.compact(before=hour * 3600.0, pid=self.owner)
            except Exception as e:  # noqa: BLE001 - small files are only slower to read
                self._failed("Capture compaction failed", e)
        return written

    def _housekeeping_due(self) -> bool:
        return time.monotonic() - self._last_housekeeping > self.retention_every_s

    def _files(self, *, orphans: bool) -> list[Path]:
        """Our spool files in order; with ``orphans``, also those of dead workers and of
        sinks that died holding a claim."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for path in self.spool.iterdir():
                parsed = parse_spool_name(path.name)
                if parsed is None or path.name.endswith(".unindexed"):
                    continue
                if path.name.startswith(".claimed-"):
                    claimer = int(path.name.split("-")[1])
                    if orphans and claimer != os.getpid() and not alive(claimer):
                        found.append(path)
                elif parsed[0] == self.owner or (orphans and not alive(parsed[0])):
                    found.append(path)
        return sorted(found, key=lambda p: parse_spool_name(p.name)[1])

    def _process(self, path: Path) -> int:
        plain = path.name.split("-", 2)[2] if path.name.startswith(".claimed-") else path.name
        claimed = self.spool / f".claimed-{os.getpid()}-{plain}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:  # another sink took it
            return 0
        _, stem, rows = parse_spool_name(plain)
        try:
            table = read_spool(claimed)
        except Exception as e:  # noqa: BLE001 - a damaged spool file is dropped, counted
            self._failed(f"Capture spool file {plain} unreadable; {rows} answers dropped", e)
            self.report("dropped", rows)
            claimed.unlink(missing_ok=True)
            return 0
        indexed = self._index(table)  # first: feedback for these answers waits on it
        written = self.files.write(table, stem)
        if written:
            self.report("written", written)
        if indexed:
            claimed.unlink(missing_ok=True)
        else:
            os.replace(claimed, self.spool / f"{plain}.unindexed")
            self._bound_unindexed()
        return written

    def _index(self, table) -> bool:
        if self.index is None:
            return True
        try:
            self.index(answers_in(table))
        except Exception as e:  # noqa: BLE001 - a database outage never stops capture
            self._failed("Capture indexing failed; the answers wait in the spool", e)
            return False
        self._errors.ok()
        return True

    def _unindexed(self) -> list[Path]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(self.spool.glob("*.unindexed"), key=lambda p: parse_spool_name(p.name)[1])
        return []

    def _retry_unindexed(self) -> None:
        for path in self._unindexed():
            try:
                table = read_spool(path)
            except FileNotFoundError:  # another sink indexed it
                continue
            if not self._index(table):
                return
            path.unlink(missing_ok=True)

    def _bound_unindexed(self) -> None:
        waiting = [(parse_spool_name(p.name)[2], p) for p in self._unindexed()]
        total = sum(rows for rows, _ in waiting)
        for rows, path in waiting:
            if total <= self.max_pending_rows:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self.report("dropped", rows)
            total -= rows

    def _failed(self, what: str, e: BaseException) -> None:
        self._errors.failed(logging.ERROR, what, e)


def main(argv: list[str] | None = None) -> int:
    from training.loop_store import FeedbackStore
    from training.settings import Settings

    (owner,) = argv if argv is not None else sys.argv[1:]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stop when the worker's pipe closes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_dir, "service.log")
    with contextlib.suppress(OSError):
        os.nice(settings.capture_sink_nice)
    store = FeedbackStore(settings.loop_url)

    def report(kind: str, n: int) -> None:
        with contextlib.suppress(BrokenPipeError):  # the worker is gone: nobody counts
            sys.stdout.write(f"{kind} {n}\n")
            sys.stdout.flush()

    drain = Drain(
        settings.capture_dir,
        int(owner),
        index=store.index,
        report=report,
        max_pending_rows=settings.capture_max_pending,
        retention_days=settings.capture_retention_days,
        max_bytes=settings.capture_max_bytes,
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
