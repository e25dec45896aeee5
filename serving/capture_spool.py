"""The spool between a worker and its capture sink: file names, reading, writing, and the
answers a spooled table holds.

A spool file is one flush of one worker, an Arrow IPC file named
``<worker pid>-<ms>-<seq>-<rows>.arrow`` (whose, in order, how big), renamed into place
when complete; while the index database is unreachable its sink keeps it as
``<name>.unindexed``. Whoever processes a worker's files holds that worker's lock
(:func:`owner_lock`, an ``flock`` the kernel releases when its holder dies, so neither a
dead process nor a reused PID can leave files that nobody may take).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import IO

import numpy as np

from serving.arrow_buffers import numpy_of
from serving.capture_table import SpoolRows
from training.answers import CLASSES_DTYPE, INPUTS_DTYPE, IndexRows, classes_json
from training.schema import FEATURES


def spool_name(owner: int, seq: int, rows: int) -> str:
    """``<worker pid>-<ms>-<seq>-<rows>.arrow``: whose, in order, and how big."""
    return f"{owner}-{int(time.time() * 1000)}-{seq:06d}-{rows}.arrow"


def parse_spool_name(name: str) -> tuple[int, str, int, tuple[int, int]] | None:
    """(owner pid, Parquet stem, rows, (ms, seq) order) of a spool file name; else None."""
    name = name.removesuffix(".unindexed")
    parts = name.removesuffix(".arrow").split("-")
    if not name.endswith(".arrow") or len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), "-".join(parts[:3]), int(parts[3]), (int(parts[1]), int(parts[2]))


def spool_files(spool: Path, owner: int | None = None, *, unindexed: bool = False) -> list[Path]:
    """Spool files (of ``owner``, or of everyone), oldest first; ``unindexed`` ones only
    if asked, else only those not yet written."""
    found = []
    with contextlib.suppress(OSError), os.scandir(spool) as entries:
        for entry in entries:
            parsed = parse_spool_name(entry.name)
            if parsed is None or entry.name.endswith(".unindexed") != unindexed:
                continue
            if owner is None or parsed[0] == owner:
                found.append((parsed[3], Path(entry.path)))
    return [path for _, path in sorted(found)]


def pending_rows(spool: Path, owner: int) -> int:
    """Rows ``owner`` spooled that are not yet written (what bounds its queue)."""
    return sum(parse_spool_name(p.name)[2] for p in spool_files(spool, owner))


def owner_lock(spool: Path, owner: int, *, wait: bool) -> IO | None:
    """Hold ``owner``'s lock (its sink does, for life; another sink, to adopt the files of
    a worker whose sink is gone). Returns the open lock file, or None if ``wait`` is False
    and someone holds it."""
    lock = open(spool / f".owner-{owner}.lock", "a")  # noqa: SIM115 - held by the caller
    try:
        fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def index_rows(table, found: SpoolRows) -> IndexRows:
    """The answers of a spool table (its flowers: ``found``) as the loop store's columns,
    built column by column: no object per answer. Every answer is there, of any role
    (``FeedbackStore.index`` skips shadow answers; a worker's spool has none)."""
    starts = found.starts

    def per_answer(values: list[str]) -> list[str]:  # one value per meta, for each answer
        return np.array(values, dtype=object)[found.meta].tolist()

    predicted = found.predicted.astype(CLASSES_DTYPE).tobytes()
    inputs = np.ascontiguousarray(found.inputs, dtype=INPUTS_DTYPE).tobytes()
    p, f = CLASSES_DTYPE.itemsize, INPUTS_DTYPE.itemsize * len(FEATURES)
    bounds = list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True))
    return IndexRows(
        table["answer_id"].to_pylist(),
        (numpy_of(table["time"], np.int64) / 1e6).tolist(),
        per_answer([m.model_version for m in found.metas]),
        per_answer([m.role for m in found.metas]),
        table["single"].to_pylist(),
        np.diff(starts).tolist(),
        per_answer([classes_json(m.classes) for m in found.metas]),
        [predicted[p * a : p * b] for a, b in bounds],
        [inputs[f * a : f * b] for a, b in bounds],
    )


def write_spool(spool: Path, table, owner: int, seq: int, rows: int) -> Path:
    """Write ``table`` (``serving.capture_columns.AnswerColumns.table``, ``rows`` flowers) as
    ``owner``'s spool file number ``seq``, complete or not at all."""
    import pyarrow as pa

    path = spool / spool_name(owner, seq, rows)
    partial = spool / f".{path.name}.tmp"
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(partial), "wb") as out, pa.ipc.new_file(out, table.schema) as f:
            f.write_table(table)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_spool(path: Path):
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()
