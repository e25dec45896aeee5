"""The capture writer: Parquet partitions, a bounded queue that drops and counts, retention."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from serving.capture import CaptureWriter, Chunk, new_id, row_ids
from training.schema import FEATURES, SPECIES


def chunk(n: int, version: str = "3", at: float | None = None, role: str = "champion") -> Chunk:
    rng = np.random.default_rng(n)
    proba = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    base = new_id()
    return Chunk(
        at if at is not None else time.time(),
        row_ids(base, n) if n > 1 else [base],
        rng.uniform(1, 7, size=(n, 4)).astype(np.float32),
        [SPECIES[i] for i in proba.argmax(axis=1)],
        proba,
        "iris-classifier",
        version,
        role,
        "http",
        0.5,
    )


def test_flush_writes_one_row_per_prediction_partitioned_by_day_and_version(tmp_path):
    written = []
    writer = CaptureWriter(tmp_path, on_written=written.append)
    chunks = [chunk(1), chunk(5, version="4"), chunk(2)]
    for c in chunks:
        assert writer.submit(c)
    assert writer.flush() == 8 and written == [8]
    frame = pd.read_parquet(tmp_path)
    assert len(frame) == 8
    assert sorted(frame["prediction_id"]) == sorted(i for c in chunks for i in c.ids)
    assert sorted(frame["model_version"].astype(str).unique()) == ["3", "4"]
    first = frame.set_index("prediction_id").loc[chunks[1].ids[2]]
    np.testing.assert_allclose(first[list(FEATURES)].to_numpy(float), chunks[1].rows[2])
    np.testing.assert_allclose(np.asarray(first["probabilities"]), chunks[1].proba[2])
    assert first["species"] == chunks[1].species[2] and first["role"] == "champion"
    day = time.strftime("%Y-%m-%d", time.gmtime())
    files = list(tmp_path.glob(f"date={day}/model_version=4/part-{os.getpid()}-*.parquet"))
    assert len(files) == 1
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path):
    dropped = []
    writer = CaptureWriter(tmp_path, max_pending_rows=10, on_dropped=dropped.append)
    assert writer.submit(chunk(6))
    assert writer.submit(chunk(4))
    started = time.perf_counter()
    assert writer.submit(chunk(3)) is False
    assert time.perf_counter() - started < 0.05
    assert dropped == [3]
    assert writer.flush() == 10
    assert writer.submit(chunk(3))  # room again after a flush


def test_close_flushes_what_is_pending(tmp_path):
    writer = CaptureWriter(tmp_path, flush_s=3600).start()
    writer.submit(chunk(7))
    writer.close()
    assert len(pd.read_parquet(tmp_path)) == 7
    assert writer.submit(chunk(1)) is False  # closed: nothing more is accepted


def test_retention_by_age_then_by_size(tmp_path):
    writer = CaptureWriter(tmp_path, retention_days=2, retention_every_s=float("inf"))
    now = time.time()
    writer.submit(chunk(3, at=now - 5 * 86400))
    writer.flush()
    old_day = next(tmp_path.glob("date=*"))
    for _ in range(3):
        writer.submit(chunk(3, at=now))
        writer.flush()
        time.sleep(0.02)  # distinct modification times
    recent = sorted(tmp_path.glob("date=*/*/part-*.parquet"), key=lambda p: p.stat().st_mtime)
    newest = recent[-1]
    writer.max_bytes = newest.stat().st_size + recent[-2].stat().st_size
    removed = writer.enforce_retention(now)
    assert old_day in removed and not old_day.exists()  # past 2 days: the whole day goes
    left = sorted(tmp_path.rglob("part-*.parquet"))
    assert newest in left and recent[-2] in left and len(left) == 2  # oldest over the cap go


def test_a_failing_sink_keeps_its_chunks_for_the_next_flush(tmp_path, caplog):
    calls = {"n": 0}
    indexed: list[str] = []

    def flaky(chunks):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("database unreachable")
        indexed.extend(i for c in chunks for i in c.ids)

    writer = CaptureWriter(tmp_path, sinks=[flaky])
    first, second = chunk(2), chunk(3)
    writer.submit(first)
    assert writer.flush() == 2  # the files are written even though the sink failed
    writer.submit(second)
    writer.flush()
    assert indexed == []
    writer.flush()  # nothing new, but the backlog is retried
    assert indexed == [*first.ids, *second.ids]
    assert caplog.text.count("database unreachable") == 1  # logged once, not every flush


def test_compaction_merges_a_workers_finished_files_and_loses_nothing(tmp_path):
    writer = CaptureWriter(tmp_path)
    chunks = [chunk(n) for n in (1, 2, 3, 4)]
    for c in chunks:
        writer.submit(c)
        writer.flush()
    before = sorted(tmp_path.rglob("part-*.parquet"))
    assert len(before) == 4
    assert writer.compact(before=time.time() + 1) == 4
    after = list(tmp_path.rglob("part-*.parquet"))
    assert len(after) == 1 and after[0].name.endswith("-h.parquet")
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["prediction_id"]) == sorted(i for c in chunks for i in c.ids)
    assert writer.compact(before=time.time() + 1) == 0  # a merged file is not merged again


def test_a_file_that_cannot_be_written_is_counted_as_dropped(tmp_path):
    dropped = []
    blocker = tmp_path / "captures"
    blocker.write_text("not a folder")  # every partition folder under it fails to be made
    writer = CaptureWriter(blocker, on_dropped=dropped.append)
    writer.submit(chunk(3))
    assert writer.flush() == 0
    assert dropped == [3]
    assert writer.submit(chunk(1))  # and the writer goes on
