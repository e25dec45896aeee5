"""The capture's files: Parquet partitions written, compacted hourly, and kept within limits.

:class:`CaptureFiles` is what a worker's capture sink process (``serving.capture_sink``)
calls for each spooled table. Files are named with the PID of the worker whose answers
they hold, written under a temporary name and renamed when complete, so workers never
touch each other's files and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from serving.arrow_buffers import bool_array, numpy_of
from serving.capture_table import DICTIONARY_COLUMNS, PARQUET_COLUMNS
from training.atomic_files import fsync, write_atomic


class CaptureFiles:
    """A sink's view of the capture folder: its worker's files, and retention for all."""

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

    def write(self, table, stem: str) -> int:
        """Write a spool table as one file per (day, version) partition, each named
        ``part-<stem>-<k>.parquet``: writing the same table again replaces the same files.

        Returns:
            The rows written (those of a partition that failed are reported and dropped).
        """
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not table.num_rows:
            return 0
        days = numpy_of(table["time"], np.int64) // 86_400_000_000  # microseconds
        versions = pc.dictionary_encode(table["model_version"]).combine_chunks()
        codes = numpy_of(versions.indices, np.int32).astype(np.int64)
        key = days * len(versions.dictionary) + codes
        total = 0
        for k, part in enumerate(np.unique(key)):
            day, code = divmod(int(part), len(versions.dictionary))
            version = versions.dictionary[code].as_py()
            selected = table.filter(bool_array(key == part)).select(list(PARQUET_COLUMNS))
            folder = (
                self.directory
                / f"date={datetime.fromtimestamp(day * 86400, UTC):%Y-%m-%d}"
                / f"model_version={version}"
            )
            name = f"part-{stem}-{k}.parquet"
            partial = folder / f".{name}.tmp"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(selected, partial, use_dictionary=DICTIONARY_COLUMNS)
                os.replace(partial, folder / name)
            except Exception as e:  # noqa: BLE001 - disk full, permissions: counted, not raised
                with contextlib.suppress(OSError):
                    partial.unlink(missing_ok=True)
                self.on_error(f"Capture file not written; {selected.num_rows} answers dropped", e)
                if self.on_dropped:
                    self.on_dropped(selected.num_rows)
                continue
            total += selected.num_rows
        return total

    def compact(self, before: float, pid: int | None = None) -> int:
        """Merge worker ``pid``'s files (this process's by default) written before
        ``before`` into one file per partition.

        A flush every second makes thousands of small files an hour; once an hour each
        worker's sink rewrites that worker's finished ones (never another's) as one file.
        The small files are streamed through, ``MERGE_ROWS`` rows at a time, so a busy
        hour (millions of rows) costs the sink no more memory than a quiet one. The merged
        file is written under a temporary name; before it is renamed into place a journal
        (``.<merged name>.merges``) lists the small files it replaces, and it is deleted
        after them, so a sink killed in between leaves no row twice for good: the next
        compaction of the folder, by any sink, finishes the deletion first.

        Returns:
            The number of small files merged away.
        """
        merged = 0
        pid = os.getpid() if pid is None else pid
        for folder in self.directory.glob("date=*/model_version=*"):
            try:
                finish_merges(folder)
                merged += self._compact_folder(folder, pid, before)
            except Exception as e:  # noqa: BLE001 - this folder stays as it is; others go on
                self.on_error(f"Capture compaction of {folder.name} failed", e)
        return merged

    def _compact_folder(self, folder: Path, pid: int, before: float) -> int:
        small = []
        for p in folder.glob(f"part-{pid}-*.parquet"):
            with contextlib.suppress(FileNotFoundError):  # retention removed it meanwhile
                if not p.name.endswith("-h.parquet") and p.stat().st_mtime < before:
                    small.append(p)
        if len(small) < 2:
            return 0
        small.sort()
        self._seq += 1
        name = f"part-{pid}-{int(time.time() * 1000)}-{self._seq:06d}-h.parquet"
        partial, journal = folder / f".{name}.tmp", folder / f".{name}.merges"
        try:
            _merge(small, partial)
            fsync(partial)  # on disk before anything points at it: a host crash too
            write_atomic(journal, "\n".join(p.name for p in small))
            os.replace(partial, folder / name)
            fsync(folder)
        except BaseException:
            journal.unlink(missing_ok=True)  # nothing replaced: the small files stay
            raise
        finally:
            partial.unlink(missing_ok=True)
        # A reader listing files right now may see rows twice (the merged file and a small
        # one not yet removed): readers that need exact counts drop duplicate prediction ids.
        for p in small:
            p.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
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


MERGE_ROWS = 65_536
"""Rows a compaction holds at once, and the size of the merged file's row groups."""


def _merge(small: list[Path], out: Path) -> None:
    """Write the rows of ``small`` (in order) to ``out``, ``MERGE_ROWS`` at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, pending, rows = None, [], 0
    try:
        for path in small:
            # ParquetFile.read, unlike pq.read_table, does not import pandas into the sink.
            table = pq.ParquetFile(path).read()
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            pending.append(table.cast(writer.schema))  # an older file's types: the same data
            rows += table.num_rows
            if rows >= MERGE_ROWS:  # whole row groups out, the rest carried on
                held = pa.concat_tables(pending)
                full = rows - rows % MERGE_ROWS
                writer.write_table(held.slice(0, full), row_group_size=MERGE_ROWS)
                pending, rows = [held.slice(full)], rows - full
        if rows:
            writer.write_table(pa.concat_tables(pending), row_group_size=MERGE_ROWS)
    finally:
        if writer is not None:
            writer.close()


def finish_merges(folder: Path, stale_s: float = 3600.0) -> None:
    """Complete the compactions a killed sink left half-done in ``folder``: where the merged
    file is in place, delete the small files its journal lists, then the journal. A
    journal without its merged file is a merge under way (another sink's) or one that died
    before its rename (its small files are all there): it goes after ``stale_s``."""
    import pyarrow.parquet as pq

    for journal in folder.glob(".part-*-h.parquet.merges"):
        merged = folder / journal.name[1 : -len(".merges")]
        with contextlib.suppress(FileNotFoundError):
            if merged.exists():
                try:
                    pq.read_metadata(merged)  # whole: its footer is written last
                except Exception:  # noqa: BLE001 - damaged: the small files are the data
                    merged.unlink()
                else:
                    for name in journal.read_text().split():
                        (folder / name).unlink(missing_ok=True)
            elif journal.stat().st_mtime > time.time() - stale_s:
                continue
            journal.unlink()
