"""The capture writer: Parquet partitions, a bounded queue that drops and counts, retention."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from serving.capture import CaptureWriter, Chunk, new_id
from training.schema import FEATURES, SPECIES


def chunk(n: int, version: str = "3", at: float | None = None, role: str = "champion") -> Chunk:
    rng = np.random.default_rng(n)
    proba = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    return Chunk(
        at if at is not None else time.time(),
        new_id(),
        n == 1,
        rng.uniform(1, 7, size=(n, 4)).astype(np.float32),
        proba,
        SPECIES,
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
    writer.files.max_bytes = newest.stat().st_size + recent[-2].stat().st_size
    removed = writer.files.enforce_retention(now)
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
    assert writer.files.compact(before=time.time() + 1) == 4
    after = list(tmp_path.rglob("part-*.parquet"))
    assert len(after) == 1 and after[0].name.endswith("-h.parquet")
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["prediction_id"]) == sorted(i for c in chunks for i in c.ids)
    assert writer.files.compact(before=time.time() + 1) == 0  # a merged file is not merged again


def test_a_file_that_cannot_be_written_is_counted_as_dropped(tmp_path):
    dropped = []
    blocker = tmp_path / "captures"
    blocker.write_text("not a folder")  # every partition folder under it fails to be made
    writer = CaptureWriter(blocker, on_dropped=dropped.append)
    writer.submit(chunk(3))
    assert writer.flush() == 0
    assert dropped == [3]
    assert writer.submit(chunk(1))  # and the writer goes on


def test_row_ids_and_species_are_made_in_the_writer_exactly_as_served(tmp_path):
    """A 1,000-row answer hands over one id; the file has ``<id>-0`` .. ``<id>-999``, and
    each row's species is its argmax in that model's own class order."""
    writer = CaptureWriter(tmp_path)
    big, one = chunk(1000), chunk(1)
    reordered = SPECIES[::-1]  # a model whose classes come in another order
    other = Chunk(*(reordered if f == "classes" else getattr(big, f) for f in Chunk.__slots__))
    for c in (big, one, other):
        writer.submit(c)
    assert writer.flush() == 2001
    frame = pd.read_parquet(tmp_path)
    assert frame["prediction_id"].is_unique is False  # big and other share their base id
    rows = frame[frame["prediction_id"].str.startswith(big.base)]
    assert sorted(rows["prediction_id"]) == sorted(2 * [f"{big.base}-{i}" for i in range(1000)])
    assert frame[frame["prediction_id"] == one.base].shape[0] == 1  # a single: no suffix
    got = rows.groupby("prediction_id")["species"].agg(sorted).to_dict()
    for i in (0, 1, 500, 999):
        best = int(big.proba[i].argmax())
        assert got[f"{big.base}-{i}"] == sorted([SPECIES[best], reordered[best]])


def test_writing_captures_does_not_import_pandas(tmp_path):
    """pandas adds about 80 MiB to every worker; pyarrow's ``pa.array`` imports it."""
    import subprocess
    import sys

    code = (
        "import sys, time, numpy as np\n"
        "from pathlib import Path\n"
        "from serving.capture import CaptureWriter, Chunk, new_id\n"
        "w = CaptureWriter(Path(sys.argv[1]))\n"
        "for n in (1, 3):\n"
        "    w.submit(Chunk(time.time(), new_id(), n == 1, np.ones((n, 4), np.float32),\n"
        "        np.full((n, 3), 1 / 3, np.float32), ('a', 'b', 'c'), 'm', '1', 'champion',\n"
        "        'http', 1.0))\n"
        "    w.flush()\n"
        "assert w.files.compact(before=time.time() + 1) == 2\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert len(pd.read_parquet(tmp_path)) == 4
