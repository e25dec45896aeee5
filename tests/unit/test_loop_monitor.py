"""Live quality from the shared store, including versions that leave the window."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
import sqlalchemy as sa

from serving.loop_monitor import LoopMonitor
from serving.served_model import ModelHolder
from tests.unit.test_champion_watch import _served
from tests.utils.postgres import postgres_server
from tests.utils.together import at_once
from training import loop_store, sql
from training.answers import Answer
from training.loop_store import FeedbackStore
from training.schema import FEATURES, SPECIES
from training.settings import Settings


class _Gauge:
    def __init__(self):
        self.values: dict[tuple, float] = {}

    def labels(self, **labels):
        key = tuple(sorted(labels.items()))
        gauge = self

        class _Child:
            def set(self, value):
                gauge.values[key] = value

        return _Child()

    def set(self, value):
        self.values[()] = value


class _Metrics:
    def __getattr__(self, name):
        gauge = _Gauge()
        setattr(self, name, gauge)
        return gauge


def single(answer_id: str, at: float, version: str, species: str, values=None) -> Answer:
    """One flower answered as such, as the capture writer indexes it."""
    return Answer(
        answer_id,
        at,
        version,
        "champion",
        True,
        SPECIES,
        np.array([SPECIES.index(species)]),
        np.array([values or [1.0] * len(FEATURES)], dtype=np.float32),
    )


def test_a_version_that_leaves_the_window_stops_reporting_its_accuracy(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'loop.sqlite'}")
    served = time.time() - 120  # two minutes ago
    store.index(single(f"{i:032x}", served, "3", "Iris-setosa") for i in range(4))
    store.label([(f"{i:032x}", "Iris-virginica" if i else "Iris-setosa") for i in range(4)])
    settings = Settings(home=tmp_path, live_window_s=3600)
    metrics = _Metrics()
    monitor = LoopMonitor(settings, store, ModelHolder(_served("4")), metrics)
    monitor.update_quality()
    key = (("model_version", "3"),)
    assert metrics.live_accuracy.values[key] == 0.25
    assert metrics.labelled.values[key] == 4
    assert math.isnan(metrics.live_accuracy.values[(("model_version", "4"),)])  # no labels yet

    settings.live_window_s = 60  # v3 rolled back: nothing of it in the window
    monitor.update_quality()
    assert metrics.labelled.values[key] == 0
    assert math.isnan(metrics.live_accuracy.values[key])


def test_the_gauges_say_when_they_were_last_recomputed_and_a_failure_leaves_it(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'loop.sqlite'}")
    settings = Settings(home=tmp_path)
    metrics = _Metrics()
    monitor = LoopMonitor(settings, store, ModelHolder(_served("4")), metrics)
    before = time.time()
    assert monitor.check_once()
    updated = metrics.loop_updated.values[()]
    assert before <= updated <= time.time()
    store.engine.dispose()
    (tmp_path / "loop.sqlite").unlink()
    (tmp_path / "loop.sqlite").mkdir()  # the database cannot be opened any more
    assert not monitor.check_once()
    assert metrics.loop_updated.values[()] == updated  # as old as the gauges' values


def test_concurrent_labels_for_the_same_ids_count_once(tmp_path):
    """Two /feedback calls racing on one id (a retry after a timeout, two workers): one
    label is added, the other call reports it unchanged or corrected, never both added."""

    uri = f"sqlite:///{tmp_path / 'loop.sqlite'}"
    FeedbackStore(uri).index(
        single(f"{i:032x}", time.time(), "1", "Iris-setosa") for i in range(200)
    )
    labels = [(f"{i:032x}", "Iris-setosa") for i in range(200)]
    stores = [FeedbackStore(uri) for _ in range(4)]  # each as its own worker would
    results = at_once([partial(store.label, labels) for store in stores])
    assert sum(len(r.added) for r in results) == 200
    assert sum(r.unchanged for r in results) == 3 * 200
    assert all(r.updated == 0 for r in results)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def loop_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loop.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    loop_store._meta.drop_all(engine)  # each test starts from empty tables
    engine.dispose()
    return url


def test_a_batch_is_one_indexed_answer_whose_rows_take_labels(loop_url):
    """A 1,000-row answer is one row of the index; ``<id>-<row>`` resolves to that row's
    inputs and predicted species, and anything else is unknown."""
    store = FeedbackStore(loop_url)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(1, 7, size=(1000, 4)).astype(np.float32)
    predicted = rng.integers(0, 3, size=1000)
    now = time.time()
    batch = Answer("b" * 32, now, "5", "champion", False, SPECIES, predicted, inputs)
    assert store.index([batch, single("a" * 32, now + 1, "5", "Iris-setosa")]) == 2
    wrong = SPECIES[(predicted[999] + 1) % 3]
    result = store.label(
        [
            (f"{'b' * 32}-999", wrong),
            (f"{'b' * 32}-0", SPECIES[predicted[0]]),
            ("a" * 32, "Iris-setosa"),
        ]
    )
    assert sorted(result.added) == [("5", "champion", False), *[("5", "champion", True)] * 2]
    for bad in (f"{'b' * 32}-1000", "b" * 32, f"{'b' * 32}-007", f"{'a' * 32}-0", f"{'b' * 32}--1"):
        try:
            store.label([(bad, "Iris-setosa")])
        except KeyError as e:
            assert e.args[0] == [bad]
        else:
            raise AssertionError(f"{bad} was accepted")
    (quality,) = store.quality(now - 1)
    assert (quality.labelled, quality.correct, quality.unlabelled) == (3, 2, 1001 - 3)
    rows = store.labelled_rows()
    np.testing.assert_allclose(rows[0][:4], inputs[0])  # served first, then by id
    np.testing.assert_allclose(rows[1][:4], inputs[999])
    assert rows[1][4] == wrong
    values, species = store.recent_inputs(10)
    assert len(values) == 10 and species[0] == "Iris-setosa"  # the newest answer first
    np.testing.assert_allclose(values[1:], inputs[:9])
    assert species[1:] == [SPECIES[i] for i in predicted[:9]]
    labelled = store.labelled_rows()
    assert store.forget_before(now + 0.5, labels_cutoff=now - 1) == 1  # the batch answer
    assert store.labelled_rows() == labelled  # labels outlive their answers
    with pytest.raises(KeyError):  # its answer is gone: a first label for a row is unknown
        store.label([(f"{'b' * 32}-1", "Iris-setosa")])
    again = store.label([(f"{'b' * 32}-999", wrong)])  # a label it has: sent again,
    assert (again.added, again.updated, again.unchanged) == ([], 0, 1)
    served_species = SPECIES[predicted[999]]
    fixed = store.label([(f"{'b' * 32}-999", served_species)])  # or corrected
    assert (fixed.added, fixed.updated, fixed.unchanged) == ([], 1, 0)
    assert store.labelled_rows()[1][4] == served_species
    assert store.forget_before(now + 0.5) == 0
    assert store.labelled_rows() == [(1.0, 1.0, 1.0, 1.0, "Iris-setosa")]


def test_served_rows_are_counted_once_per_answer_and_follow_the_window(loop_url):
    """Live quality's served rows come from per-minute counts kept with the index: a spool
    file indexed twice (a retry) counts once, old minutes leave the window, and forgetting
    old predictions forgets their counts."""
    store = FeedbackStore(loop_url)
    now = time.time()
    old = [single(f"{i:032x}", now - 7200, "1", "Iris-setosa") for i in range(5)]
    rows = np.ones((3, len(FEATURES)), dtype=np.float32)
    batch = Answer("b" * 32, now, "1", "champion", False, SPECIES, np.array([0, 1, 2]), rows)
    new = [batch, single("c" * 32, now, "2", "Iris-setosa")]
    assert store.index([*old, *new]) == 7
    assert store.index(new) == 2  # given again: already there, not counted again
    twice = single("e" * 32, now - 7200, "1", "Iris-setosa")
    assert store.index([twice, twice]) == 2  # one id twice in one call: one answer

    def unlabelled(since: float) -> dict[str, int]:
        return {q.model_version: q.unlabelled for q in store.quality(since)}

    assert unlabelled(now - 3600) == {"1": 3, "2": 1}
    assert unlabelled(now - 3 * 3600) == {"1": 9, "2": 1}
    assert store.index([single("d" * 32, now, "1", "Iris-setosa")]) == 1  # the same minute
    assert unlabelled(now - 3600) == {"1": 4, "2": 1}  # added to its count, not replacing it
    store.label([("c" * 32, "Iris-setosa")])
    (v2,) = [q for q in store.quality(now - 3600) if q.model_version == "2"]
    assert (v2.labelled, v2.unlabelled, v2.accuracy) == (1, 0, 1.0)
    assert store.forget_before(now - 3600) == 6
    assert unlabelled(now - 3 * 3600) == {"1": 4, "2": 0}


def test_retention_deletes_in_short_transactions(loop_url, monkeypatch):
    """Each transaction deletes at most ``batch_rows`` (on SQLite one holds the whole
    file's write lock), and between them another writer gets in (a test of the lock on
    SQLite only: PostgreSQL's row locks never kept a new row out)."""
    monkeypatch.setattr(loop_store, "FORGET_PAUSE_S", 0.0)
    store = FeedbackStore(loop_url)
    now = time.time()
    store.index([single(f"{i:032x}", now - 7200, "1", "Iris-setosa") for i in range(25)])
    store.label([(f"{i:032x}", "Iris-setosa") for i in range(12)])
    deleted: list[tuple[str, int]] = []

    def batch(clauseelement) -> bool:
        return isinstance(clauseelement, sa.Delete) and clauseelement.table.name != (
            "iris_served_counts"
        )

    def before(conn, clauseelement, multiparams, params, execution_options):
        if batch(clauseelement) and len(deleted) == 3:  # the first answers' batch is done
            with ThreadPoolExecutor(1) as other:  # another writer gets in before the next
                fresh = [single("f" * 32, now, "1", "Iris-setosa")]
                assert other.submit(store.index, fresh).result(timeout=30) == 1

    def after(conn, clauseelement, multiparams, params, execution_options, result):
        if batch(clauseelement):
            deleted.append((clauseelement.table.name, result.rowcount))

    sa.event.listen(store.engine, "before_execute", before)
    sa.event.listen(store.engine, "after_execute", after)
    try:
        assert store.forget_before(now - 3600, batch_rows=10) == 25
    finally:
        sa.event.remove(store.engine, "before_execute", before)
        sa.event.remove(store.engine, "after_execute", after)
    assert deleted == [
        ("iris_labels", 10),
        ("iris_labels", 2),
        ("iris_answers", 10),
        ("iris_answers", 10),
        ("iris_answers", 5),
    ]
    assert store.labelled_rows() == [] and store.forget_before(now + 1) == 1
    with pytest.raises(ValueError, match="at least 1"):  # 0 would never end
        store.forget_before(now, batch_rows=0)


def test_a_locked_table_fails_a_statement_after_its_timeout_and_retention_runs_long(
    postgres_url,
):
    """With ``statement_s``, PostgreSQL cancels a statement that waits on a lock (an error
    the caller reports as an outage). Retention may run longer than that, but does not
    wait longer than that for a lock."""
    engine = sa.create_engine(postgres_url)
    loop_store._meta.drop_all(engine)
    store = FeedbackStore(postgres_url, statement_s=0.5)
    now = time.time()
    store.index([single("a" * 32, now - 100, "1", "Iris-setosa")])
    pool = ThreadPoolExecutor(2)
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("LOCK TABLE iris_answers IN ACCESS EXCLUSIVE MODE")
            label = partial(store.label, [("a" * 32, "Iris-setosa")])
            forget = partial(store.forget_before, now)
            for call, why in ((label, "statement timeout"), (forget, "lock timeout")):
                started = time.monotonic()
                with pytest.raises(sa.exc.OperationalError, match=why):
                    pool.submit(call).result(timeout=10)  # a hang fails, not blocks, the test
                assert time.monotonic() - started < 3
        with store.engine.begin() as conn:  # what retention runs under
            sql.without_statement_timeout(conn, lock_wait_s=0.5)
            conn.exec_driver_sql("SELECT pg_sleep(1.0)")  # twice the statement timeout
            timeouts = [
                conn.exec_driver_sql(f"SHOW {n}").scalar()
                for n in ("statement_timeout", "lock_timeout")
            ]
        assert timeouts == ["0", "500ms"]
        assert store.forget_before(now) == 1
        # Options the URL gives are kept beside ours.
        url = f"{postgres_url}?options=-c%20application_name%3Diris-t&keepalives_idle=60"
        named = FeedbackStore(url, statement_s=0.25)
        with named.engine.connect() as conn:
            shown = [
                conn.exec_driver_sql(f"SHOW {n}").scalar()
                for n in ("statement_timeout", "application_name")
            ]
            dsn = conn.connection.dbapi_connection.get_dsn_parameters()
        named.engine.dispose()
        assert shown == ["250ms", "iris-t"]
        # TCP bounds for a cut network (tests/reliability/test_db_network_cut.py), the URL's
        # own value kept.
        tcp = ("tcp_user_timeout", "keepalives", "keepalives_idle", "keepalives_count")
        assert [dsn.get(k) for k in tcp] == ["30000", "1", "60", "3"], dsn
    finally:
        pool.shutdown(wait=False)
        store.engine.dispose()
        engine.dispose()
