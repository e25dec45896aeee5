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
import json
import os
import time
from pathlib import Path
from typing import IO

import numpy as np

from serving.capture_table import numeric_array, numpy_of, string_array
from training.answers import Answer, row_argmax
from training.schema import FEATURES, SHADOW


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


def answers_in(table) -> list[Answer]:
    """The answers of a spool table as the loop store indexes them (shadow scores are
    not: nobody saw them, so nobody can label them). Rows of an answer are contiguous."""
    import pyarrow.compute as pc

    # An Arrow scalar, not a Python str: converting one imports pandas into the sink.
    served = table.filter(pc.not_equal(table["role"], string_array([SHADOW])[0]))
    if not served.num_rows:
        return []
    owner = numpy_of(served["answer"], np.int32)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    ends = np.r_[starts[1:], len(owner)]
    width = served.schema.field("probabilities").type.list_size
    proba = numpy_of(served["probabilities"].combine_chunks().flatten(), np.float32)
    proba = proba.reshape(-1, width)
    predicted = row_argmax(proba)
    inputs = np.column_stack([numpy_of(served[f], np.float32) for f in FEATURES])
    first = numeric_array(starts)
    micros = numpy_of(pc.take(served["time"], first), np.int64)
    fields = {
        name: pc.take(served[name], first).to_pylist()
        for name in ("answer_id", "model_version", "role", "single", "classes")
    }
    orders: dict[str, tuple[str, ...]] = {}
    return [
        Answer(
            fields["answer_id"][k],
            micros[k] / 1e6,
            fields["model_version"][k],
            fields["role"][k],
            fields["single"][k],
            orders.setdefault(fields["classes"][k], tuple(json.loads(fields["classes"][k]))),
            predicted[start:end],
            inputs[start:end],
        )
        for k, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]


def write_spool(spool: Path, table, owner: int, seq: int) -> Path:
    """Write ``table`` as ``owner``'s spool file number ``seq``, complete or not at all."""
    import pyarrow as pa

    path = spool / spool_name(owner, seq, table.num_rows)
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
