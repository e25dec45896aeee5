"""The capture writer and its sink: Parquet partitions, a bounded queue that drops and
counts, the prediction index, retention.

Most tests run the sink's pass (:class:`Drain`) in-process after the worker side spools;
``test_a_real_sink_process_writes_everything_on_a_clean_close`` runs the sink process."""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from serving.capture import CaptureWriter, Chunk, new_id
from serving.capture_sink import Drain
from serving.capture_spool import index_rows, owner_lock, read_spool, spool_files
from serving.capture_table import spool_rows
from serving.child_env import capture_sink_env
from training import loop_store
from training.answers import Answer, IndexRows
from training.loop_store import FeedbackStore
from training.schema import FEATURES, SPECIES
from training.settings import Settings


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


class Reports(list):
    """What a sink reports to its worker: ``(kind, rows)`` pairs (``(kind, "rows reason")``
    for drops)."""

    def __call__(self, kind: str, n: int | str) -> None:
        self.append((kind, n))


def sink(directory, index=None, **kwargs) -> Drain:
    """The sink's pass over the spool of this process's writer, run in-process."""
    return Drain(directory, os.getpid(), index=index, report=Reports(), **kwargs)


def real_sink_writer(tmp_path):
    """A started writer with a real sink process (flushed by hand): the writer, its capture
    folder, the ``written`` counts its sink reported, and the settings it runs on."""
    captures, written = tmp_path / "captures", []
    settings = Settings(home=tmp_path, capture_dir=captures)
    writer = CaptureWriter(
        captures, flush_s=3600, sink_env=capture_sink_env(settings), on_written=written.append
    ).start()
    return writer, captures, written, settings


def test_flush_writes_one_row_per_prediction_partitioned_by_day_and_version(tmp_path):
    writer, drain = CaptureWriter(tmp_path), sink(tmp_path)
    chunks = [chunk(1), chunk(5, version="4"), chunk(2)]
    for c in chunks:
        assert writer.submit(c)
    assert writer.flush() == 8  # spooled
    assert drain.once() == 8 and drain.report == [("written", 8)]
    assert not list((tmp_path / ".spool").iterdir())  # written, then the spool file goes
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


def test_prediction_ids_are_uuid7_and_sort_by_time():
    import uuid

    before = time.time()
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and i.isalnum() for i in ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis) and before * 1000 - 1 <= millis[0] <= time.time() * 1000


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path):
    dropped = []
    writer = CaptureWriter(
        tmp_path, max_pending_rows=10, on_dropped=lambda n, reason: dropped.append((n, reason))
    )
    assert writer.submit(chunk(6))
    assert writer.submit(chunk(4))
    started = time.perf_counter()
    assert writer.submit(chunk(3)) is False
    assert time.perf_counter() - started < 0.05
    assert dropped == [(3, "queue_full")]
    assert writer.flush() == 10
    assert writer.submit(chunk(3)) is False  # spooled rows count until the sink writes them
    assert dropped == [(3, "queue_full")] * 2
    assert sink(tmp_path).once() == 10
    writer.flush()  # the writer learns at its next flush that the spool was written
    assert writer.submit(chunk(3)) and writer.flush() == 3


def test_a_real_sink_process_writes_everything_on_a_clean_close(tmp_path):
    writer, captures, written, settings = real_sink_writer(tmp_path)
    big, small = chunk(7), chunk(1)
    writer.submit(big)
    writer.submit(small)
    writer.close()
    frame = pd.read_parquet(captures)
    assert sorted(frame["prediction_id"]) == sorted(big.ids + small.ids)
    assert written == [8]  # reported back by the sink, counted by the worker
    assert writer.submit(chunk(1)) is False  # closed: nothing more is accepted
    assert not list((captures / ".spool").glob("*.arrow*"))  # all written, none waiting
    from training.loop_store import FeedbackStore

    store = FeedbackStore(settings.loop_url)
    labelled = store.label([(big.ids[3], "Iris-setosa")])  # unknown ids would raise KeyError
    assert len(labelled.added) == 1  # indexed by the sink: the label resolved and was stored


def test_a_sink_that_dies_is_restarted_and_a_dead_sink_never_breaks_close(tmp_path):
    import signal

    writer, captures, written, _settings = real_sink_writer(tmp_path)
    writer.RESTART_S = 0.0
    first = writer._sink
    first.kill()
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    writer.submit(big := chunk(5))
    assert writer.flush() == 5  # spooled; the dead sink is noticed and replaced
    assert writer._sink is not first and writer._sink.poll() is None
    writer.close()
    assert sorted(pd.read_parquet(captures)["prediction_id"]) == sorted(big.ids)
    assert written == [5]

    other = captures / "other"
    elsewhere = capture_sink_env(Settings(home=tmp_path, capture_dir=other))
    dead = CaptureWriter(other, sink_env=elsewhere).start()
    dead._sink.kill()
    dead._sink.wait(10)
    dead.submit(chunk(1))
    dead.close()  # spools, finds the sink gone: no exception (its spool waits for adoption)
    assert len(list((other / ".spool").glob("*.arrow"))) == 1


def test_a_sink_hung_in_the_challenger_is_killed_and_replaced(tmp_path, caplog):
    """A sink whose shadow marker is STALL_S old has hung in the challenger's model: its
    worker kills it and starts another, which writes what waited and is left alone (the
    marker its predecessor left is not its own). A younger marker is a call in progress."""
    import json
    import signal

    from serving.shadow_scoring import ban_path, marker_path

    writer, captures, written, _settings = real_sink_writer(tmp_path)
    writer.RESTART_S, writer.STALL_S = 0.0, 1.0
    sink = writer._sink
    os.kill(sink.pid, signal.SIGSTOP)  # alive, and never again making progress...
    marker = marker_path(captures / ".spool", os.getpid())
    marker.write_text(json.dumps(["x", "2", time.monotonic()]))  # ...in the challenger
    try:
        writer.submit(answers := chunk(5))
        assert writer.flush() == 5
        assert writer._sink is sink and sink.poll() is None  # in the call for under 1 s
        time.sleep(1.2)
        writer.flush()  # in the call for over 1 s: killed, and a new sink started
        assert sink.returncode == -signal.SIGKILL
        assert writer._sink is not sink and writer._sink.poll() is None
    finally:
        if sink.poll() is None:
            sink.kill()
    replacement = writer._sink
    banned, deadline = ban_path(marker), time.monotonic() + 30
    while not banned.exists() and time.monotonic() < deadline:  # the replacement's start
        time.sleep(0.05)
    assert json.loads(banned.read_text())[:2] == ["x", "2"]  # the marker became the ban
    stale = time.monotonic() - 5  # before the replacement started, and over STALL_S old
    marker.with_suffix(".tmp").write_text(json.dumps(["x", "2", stale]))
    marker.with_suffix(".tmp").replace(marker)  # as its predecessor would have left it
    writer.flush()
    assert writer._sink is replacement and replacement.poll() is None  # not its marker
    marker.unlink()
    writer.close()
    assert sorted(pd.read_parquet(captures)["prediction_id"]) == sorted(answers.ids)
    assert written == [5]
    assert caplog.text.count("killing it") == 1


def test_retention_by_age_then_by_size(tmp_path):
    writer = CaptureWriter(tmp_path)
    drain = sink(tmp_path, retention_days=2, retention_every_s=float("inf"))
    drain._last_housekeeping = time.monotonic()
    now = time.time()
    writer.submit(chunk(3, at=now - 5 * 86400))
    writer.flush()
    drain.once()
    old_day = next(tmp_path.glob("date=*"))
    for _ in range(3):
        writer.submit(chunk(3, at=now))
        writer.flush()
        drain.once()
        time.sleep(0.02)  # distinct modification times
    recent = sorted(tmp_path.glob("date=*/*/part-*.parquet"), key=lambda p: p.stat().st_mtime)
    newest = recent[-1]
    drain.files.max_bytes = newest.stat().st_size + recent[-2].stat().st_size
    removed = drain.files.enforce_retention(now)
    assert old_day in removed and not old_day.exists()  # past 2 days: the whole day goes
    left = sorted(tmp_path.rglob("part-*.parquet"))
    assert newest in left and recent[-2] in left and len(left) == 2  # oldest over the cap go


def test_an_unreachable_index_keeps_answers_in_the_spool_until_it_is_back(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr("serving.capture_sink.INDEX_RETRY_S", 0.0)  # retry at every pass
    calls = {"n": 0}
    store = FeedbackStore(tmp_path / ".loop.sqlite")  # a dot file: Parquet readers skip it

    def flaky(answers):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("database unreachable")
        store.index(answers)

    writer, drain = CaptureWriter(tmp_path), sink(tmp_path, index=flaky)
    first, second, shadow = chunk(2), chunk(3), chunk(4, role="shadow")
    writer.submit(first)
    writer.flush()
    assert drain.once() == 2  # the files are written even though the index failed
    assert [p.name.endswith(".unindexed") for p in (tmp_path / ".spool").iterdir()] == [True]
    writer.submit(second)
    writer.submit(shadow)
    writer.flush()
    assert drain.once() == 7
    with store.engine.connect() as conn:
        indexed = conn.execute(sa.select(loop_store.answers.c.answer_id)).scalars().all()
    assert sorted(indexed) == sorted([first.base, second.base])  # shadow scores: never
    assert not list((tmp_path / ".spool").iterdir())
    assert caplog.text.count("database unreachable") == 1  # logged once, not every pass
    assert len(pd.read_parquet(tmp_path)) == 9


def test_compaction_merges_a_workers_finished_files_and_loses_nothing(tmp_path):
    writer, drain = CaptureWriter(tmp_path), sink(tmp_path)
    chunks = [chunk(n) for n in (1, 2, 3, 4)]
    for c in chunks:
        writer.submit(c)
        writer.flush()
        drain.once()
    before = sorted(tmp_path.rglob("part-*.parquet"))
    assert len(before) == 4
    assert drain.files.compact(before=time.time() + 1) == 4
    after = list(tmp_path.rglob("part-*.parquet"))
    assert len(after) == 1 and after[0].name.endswith("-h.parquet")
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["prediction_id"]) == sorted(i for c in chunks for i in c.ids)
    assert drain.files.compact(before=time.time() + 1) == 0  # a merged file is not merged again


def test_compaction_streams_in_bounded_row_groups(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr("serving.capture_files.MERGE_ROWS", 8)
    writer, drain = CaptureWriter(tmp_path), sink(tmp_path)
    chunks = [chunk(n) for n in (5, 5, 5, 5, 3)]
    for c in chunks:
        writer.submit(c)
        writer.flush()
        drain.once()
    assert drain.files.compact(before=time.time() + 1) == 5
    (merged,) = tmp_path.rglob("part-*.parquet")
    groups = pq.ParquetFile(merged).metadata
    # Never more than 8 + 5 rows held; whole groups of 8 written, the rest carried on.
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == [8, 8, 7]
    assert list(pd.read_parquet(merged)["prediction_id"]) == [i for c in chunks for i in c.ids]


def test_a_compaction_killed_after_its_rename_is_finished_by_the_next(tmp_path):
    """The merged file is in place, some small files are not yet deleted: the next
    compaction (of any sink) deletes them, so no row stays twice."""
    writer, drain = CaptureWriter(tmp_path), sink(tmp_path)
    chunks = [chunk(n) for n in (1, 2, 3)]
    for c in chunks:
        writer.submit(c)
        writer.flush()
        drain.once()
    small = sorted(tmp_path.rglob("part-*.parquet"))
    kept = {p: p.read_bytes() for p in small}
    assert drain.files.compact(before=time.time() + 1) == 3
    (merged,) = tmp_path.rglob("part-*-h.parquet")
    for p, data in kept.items():  # as if killed before deleting them
        p.write_bytes(data)
    journal = merged.with_name(f".{merged.name}.merges")
    journal.write_text("\n".join(p.name for p in small))
    assert len(pd.read_parquet(tmp_path)) == 12  # each row twice
    # Another worker's sink compacts the folder: it finishes the merge first.
    other = Drain(tmp_path, 1, index=None, report=Reports())
    assert other.files.compact(before=time.time() + 1, pid=1) == 0
    assert list(tmp_path.rglob("part-*.parquet")) == [merged]
    assert not journal.exists()
    assert sorted(pd.read_parquet(tmp_path)["prediction_id"]) == sorted(
        i for c in chunks for i in c.ids
    )


def test_a_damaged_merged_file_is_removed_and_its_small_files_kept(tmp_path):
    """A host that crashed after the rename but before the merged file reached the disk:
    the journal names small files the merged one does not hold. They are the data."""
    from serving.capture_files import finish_merges

    writer, drain = CaptureWriter(tmp_path), sink(tmp_path)
    for n in (1, 2):
        writer.submit(chunk(n))
        writer.flush()
        drain.once()
    small = sorted(tmp_path.rglob("part-*.parquet"))
    folder = small[0].parent
    merged = folder / f"part-{os.getpid()}-1-000001-h.parquet"
    merged.write_bytes(b"")  # renamed, never written
    (folder / f".{merged.name}.merges").write_text("\n".join(p.name for p in small))
    finish_merges(folder)
    assert sorted(folder.glob("part-*.parquet")) == small
    assert not list(folder.glob(".*.merges"))
    assert len(pd.read_parquet(tmp_path)) == 3


def test_answers_after_the_stop_are_dropped_as_stopping(tmp_path):
    dropped = []
    writer = CaptureWriter(tmp_path, on_dropped=lambda n, reason: dropped.append((n, reason)))
    writer.close()
    assert writer.submit(chunk(2)) is False
    assert dropped == [(2, "stopping")]


def test_a_file_that_cannot_be_written_is_counted_as_dropped(tmp_path):
    day = time.strftime("%Y-%m-%d", time.gmtime())
    (tmp_path / f"date={day}").write_text("not a folder")  # its partitions cannot be made
    writer, drain = CaptureWriter(tmp_path), sink(tmp_path)
    writer.submit(chunk(3))
    writer.flush()
    assert drain.once() == 0 and drain.report == [("dropped", "3 not_written")]
    assert writer.submit(chunk(1))  # and the writer goes on


def test_a_spool_that_cannot_be_written_is_counted_as_dropped(tmp_path):
    dropped = []
    (tmp_path / ".spool").write_text("not a folder")
    writer = CaptureWriter(tmp_path, on_dropped=lambda n, reason: dropped.append((n, reason)))
    writer.submit(chunk(3))
    with pytest.raises(OSError):
        writer.flush()  # the writer thread logs it and goes on
    assert dropped == [(3, "not_spooled")]
    assert writer._queue is not writer._spare  # the two buffers still take turns
    assert writer.submit(chunk(1))


def test_an_answer_that_cannot_be_queued_is_counted_never_raised(tmp_path, caplog):
    """The hand-off runs on the request path: a chunk whose arrays do not fit the capture
    columns is refused (counted, its reason logged once); the answer itself goes out."""
    dropped = []
    writer = CaptureWriter(tmp_path, on_dropped=lambda n, reason: dropped.append((n, reason)))
    good = chunk(2)
    flat = dataclasses.replace(good, proba=good.proba.reshape(-1))
    assert writer.submit(flat) is False and writer.submit(flat) is False
    assert dropped == [(2, "not_spooled")] * 2
    assert caplog.text.count("Capture drops answers: rows (2, 4) and probabilities (6,)") == 1
    assert writer.submit(good) and writer.flush() == 2


def test_a_dead_workers_spool_is_adopted_by_another_sink_once_its_lock_is_free(tmp_path):
    writer = CaptureWriter(tmp_path)
    writer.submit(first := chunk(2))
    writer.flush()
    (spooled,) = (tmp_path / ".spool").iterdir()
    gone = os.getpid() + 1  # any PID: liveness is the lock, never the PID
    spooled.rename(spooled.with_name(spooled.name.replace(f"{os.getpid()}-", f"{gone}-", 1)))
    other = Drain(tmp_path, 1, index=None, report=Reports())  # another worker's sink
    held = owner_lock(tmp_path / ".spool", gone, wait=False)  # its sink is alive
    assert held is not None
    other._last_housekeeping = 0.0  # adoption is looked at once a minute: now
    assert other.once() == 0  # not adopted while its sink holds the lock
    assert len(list((tmp_path / ".spool").glob("*.arrow"))) == 1
    held.close()  # the kernel releases it when that sink dies
    other._last_housekeeping = 0.0
    assert other.once() == 2
    assert sorted(pd.read_parquet(tmp_path)["prediction_id"]) == sorted(first.ids)
    assert list(tmp_path.rglob(f"part-{gone}-*.parquet"))  # still named for its worker
    assert not list((tmp_path / ".spool").glob("*.arrow*"))
    # The lock file stays: a flock belongs to the file, and a sink restarted for this
    # worker may be waiting on it; a new file under the same name would let two sinks in.
    assert (tmp_path / ".spool" / f".owner-{gone}.lock").exists()


def test_index_failures_keep_parquet_going_and_the_backlog_is_bounded(tmp_path, caplog):
    calls = []

    def down(answers):
        calls.append(len(answers))
        raise TimeoutError("database hangs")

    writer = CaptureWriter(tmp_path)
    drain = sink(tmp_path, index=down, max_pending_rows=5)
    for n in (3, 3):
        writer.submit(chunk(n))
        writer.flush()
    spooled = sorted((tmp_path / ".spool").glob("*.arrow"))  # oldest first (same ms: seq)
    assert drain.once() == 6  # both files written to Parquet
    assert calls == [1]  # one try (one answer of 3 rows), none more until INDEX_RETRY_S
    waiting = list((tmp_path / ".spool").glob("*.unindexed"))
    assert [p.name for p in waiting] == [spooled[-1].name + ".unindexed"]  # the oldest went
    assert "will not be indexed" in caplog.text
    indexed = []
    drain.index = lambda answers: indexed.extend(answers.answer_id)
    drain.once()
    assert indexed == []  # still backing off
    drain._index_retry_at = 0.0  # INDEX_RETRY_S later
    drain.once()
    assert len(indexed) == 1 and not list((tmp_path / ".spool").glob("*.unindexed"))


def test_an_index_insert_that_never_answers_holds_back_neither_parquet_nor_the_exit(
    tmp_path, caplog, monkeypatch
):
    """A frozen database: the insert hangs. The sink gives up on it after its bound,
    writes the files, tries no other insert until that one returns, then indexes all."""
    monkeypatch.setattr("serving.capture_sink.INDEX_RETRY_S", 0.0)
    release, tried, indexed = threading.Event(), [], []

    def frozen(answers):
        tried.append(answers.answer_id)
        release.wait(30)
        indexed.extend(answers.answer_id)

    writer, drain = CaptureWriter(tmp_path), sink(tmp_path, index=frozen, index_wait_s=0.2)
    first, second = chunk(2), chunk(3)
    writer.submit(first)
    writer.flush()
    assert drain.once() == 2  # within the bound, although the insert still hangs
    writer.submit(second)
    writer.flush()
    assert drain.once() == 3
    assert tried == [[first.base]]  # no second insert behind the stuck one
    assert len(list((tmp_path / ".spool").glob("*.unindexed"))) == 2
    assert "did not answer within 0.2 s" in caplog.text
    release.set()  # the database answers again: the stuck insert completes
    deadline = time.monotonic() + 10
    while drain._index_calls.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    drain.once()
    assert sorted(indexed) == sorted([first.base, first.base, second.base])  # once more: idempotent
    assert not list((tmp_path / ".spool").iterdir())
    assert len(pd.read_parquet(tmp_path)) == 5


def test_a_damaged_spool_file_is_dropped_and_counted_and_the_others_go_on(tmp_path, caplog):
    writer = CaptureWriter(tmp_path)
    for n in (2, 3):
        writer.submit(chunk(n))
        writer.flush()
    first, _ = sorted((tmp_path / ".spool").glob("*.arrow"))
    first.write_bytes(first.read_bytes()[:100])  # a disk that lost its end
    broken = tmp_path / ".spool" / f"{os.getpid()}-1-999-4.arrow.unindexed"
    broken.write_bytes(b"not arrow")  # damaged while it waited for the index
    drain = sink(tmp_path, index=lambda answers: None)
    assert drain.once() == 3
    assert ("dropped", "2 unreadable") in drain.report and ("written", 3) in drain.report
    assert not list((tmp_path / ".spool").glob("*.arrow*"))  # none left to fail again
    assert f"{first.name} unreadable; 2 rows dropped" in caplog.text
    assert f"{broken.name} unreadable; not indexed" in caplog.text
    assert len(pd.read_parquet(tmp_path)) == 3


def test_row_ids_and_species_are_made_in_the_sink_exactly_as_served(tmp_path):
    """A 1,000-row answer hands over one id; the file has ``<id>-0`` .. ``<id>-999``, and
    each row's species is its argmax in that model's own class order."""
    writer = CaptureWriter(tmp_path)
    big, one = chunk(1000), chunk(1)
    reordered = SPECIES[::-1]  # a model whose classes come in another order
    other = Chunk(*(reordered if f == "classes" else getattr(big, f) for f in Chunk.__slots__))
    for c in (big, one, other):
        writer.submit(c)
    assert writer.flush() == 2001
    assert sink(tmp_path).once() == 2001
    frame = pd.read_parquet(tmp_path)
    assert frame["prediction_id"].is_unique is False  # big and other share their base id
    rows = frame[frame["prediction_id"].str.startswith(big.base)]
    assert sorted(rows["prediction_id"]) == sorted(2 * [f"{big.base}-{i}" for i in range(1000)])
    assert frame[frame["prediction_id"] == one.base].shape[0] == 1  # a single: no suffix
    got = rows.groupby("prediction_id")["species"].agg(sorted).to_dict()
    for i in (0, 1, 500, 999):
        best = int(big.proba[i].argmax())
        assert got[f"{big.base}-{i}"] == sorted([SPECIES[best], reordered[best]])


def test_the_index_rows_of_a_spool_file_are_each_answers_own(tmp_path):
    """The sink builds a flush's index rows column by column; each equals what its answer
    alone packs (``Answer.record``): singles and batches, versions and roles, and a model
    whose classes come in another order."""
    writer = CaptureWriter(tmp_path)
    reordered = dataclasses.replace(chunk(4, version="5", role="challenger"), classes=SPECIES[::-1])
    shadow = chunk(2, role="shadow")  # kept here: the store is what skips it
    chunks = [chunk(1), chunk(3, version="4"), chunk(1, version="4"), reordered, shadow, chunk(1)]
    for c in chunks:
        writer.submit(c)
    writer.flush()
    (path,) = spool_files(writer.spool)
    spooled = read_spool(path)
    got = index_rows(spooled, spool_rows(spooled))
    want = IndexRows.of(
        Answer(c.base, c.time, c.model_version, c.role, c.single, c.classes,
               c.proba.argmax(axis=1), c.rows)
        for c in chunks
    )  # fmt: skip
    assert got.time == pytest.approx(want.time, abs=1e-6)  # kept as microseconds
    assert dataclasses.replace(got, time=want.time) == want
    assert [len(b) for b in got.inputs] == [16, 48, 16, 64, 32, 16]


def test_queued_arrays_grow_are_reused_and_refuse_another_class_count(tmp_path):
    """The queue's arrays start at 1,024 answers and rows: 3,000 answers grow them, the
    flushes after go on with the same two sets of arrays, and an answer with another
    number of classes than the flush's others is dropped and counted instead of spoiling
    the flush."""
    dropped = []
    writer = CaptureWriter(tmp_path, on_dropped=lambda n, reason: dropped.append((n, reason)))
    first = [chunk(1, role="shadow" if i % 3 else "champion") for i in range(3000)]
    for c in first:
        assert writer.submit(c)
    four = dataclasses.replace(
        chunk(2), proba=np.full((2, 4), 0.25, np.float32), classes=(*SPECIES, "Iris-unknown")
    )
    assert writer.submit(four) is False and dropped == [(2, "not_spooled")]
    assert writer.flush() == 3000
    second = [chunk(5, version="4") for _ in range(3)]
    for c in second:
        assert writer.submit(c)
    assert writer.flush() == 15
    assert sink(tmp_path).once() == 3015
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["prediction_id"]) == sorted(i for c in first + second for i in c.ids)
    shadow = frame[frame["prediction_id"] == first[1].base].iloc[0]
    assert shadow["role"] == "shadow" and shadow["species"] == first[1].species[0]
    assert shadow["sepal_length"] == pytest.approx(first[1].rows[0, 0])


def test_writing_captures_does_not_import_pandas(tmp_path):
    """pandas adds about 80 MiB to every worker and sink; pyarrow imports it to convert
    Python values (``pa.array``, a ``str`` compared with a column, ``to_numpy``)."""
    import subprocess
    import sys

    code = (
        "import os, sys, time, numpy as np\n"
        "from pathlib import Path\n"
        "from serving.capture import CaptureWriter, Chunk, new_id\n"
        "from serving.capture_sink import Drain\n"
        "w = CaptureWriter(Path(sys.argv[1]))\n"
        # The index in a dot file, which Parquet readers of the folder skip.
        "from training.loop_store import FeedbackStore\n"
        "index = FeedbackStore(f'sqlite:///{sys.argv[1]}/.loop.db').index\n"
        "d = Drain(Path(sys.argv[1]), os.getpid(), index=index, report=lambda k, n: None)\n"
        "for n in (1, 3):\n"
        "    w.submit(Chunk(time.time(), new_id(), n == 1, np.ones((n, 4), np.float32),\n"
        "        np.full((n, 3), 1 / 3, np.float32), ('a', 'b', 'c'), 'm', '1', 'champion',\n"
        "        'http', 1.0))\n"
        "    w.flush()\n"
        "    d.once()\n"
        "assert d.files.compact(before=time.time() + 1) == 2\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert len(pd.read_parquet(tmp_path)) == 4


def test_index_failures_in_a_row_rest_longer_up_to_a_minute_and_a_success_resets(tmp_path):
    outcomes = itertools.chain([ConnectionError("refused")] * 6, itertools.repeat(None))

    def index(answers):
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    writer, drain = CaptureWriter(tmp_path), sink(tmp_path, index=index)
    rests = []
    for _ in range(8):
        writer.submit(chunk(1))
        writer.flush()
        drain._index_retry_at = 0.0  # the rest is over
        drain.once()
        rests.append(round(max(drain._index_retry_at - time.monotonic(), 0)))
    assert rests == [5, 10, 20, 40, 60, 60, 0, 0]  # then the waiting files were indexed too
    assert not list((tmp_path / ".spool").glob("*.unindexed"))
