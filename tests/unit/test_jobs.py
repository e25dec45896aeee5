"""Retrain job records: single flight, outcomes, dead jobs; on SQLite and a real PostgreSQL.

Every test runs against both backends of :class:`serving.job_store_sql.JobStore`: the
embedded SQLite file and a PostgreSQL server started for this module (the fleet's
``IRIS_JOBS_URI``). Separate ``JobStore`` objects stand for separate replicas: each has
its own engine and connections, as replica processes do.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest
import sqlalchemy as sa

from harness.processes import free_port
from serving.job_store_sql import JobStore, jobs_table, metadata
from serving.jobs import ConflictError, JobsUnavailableError
from serving.retrain_job import keep_alive
from tests.utils.postgres import postgres_server
from tests.utils.together import at_once


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'jobs.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    metadata.drop_all(engine)  # each test starts from an empty table
    engine.dispose()
    return url


@pytest.fixture
def store(url) -> JobStore:
    return JobStore(url)


def rewrite(url: str, job_id: str, **values) -> None:
    """Change a record behind the store's back, as another machine's replica would have."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(**values))
    engine.dispose()


def test_single_flight_and_outcomes(store, tmp_path):
    job = store.create(tmp_path / "a.csv")
    assert job.state == "queued"
    with pytest.raises(ConflictError) as conflict:
        store.create(tmp_path / "b.csv")
    assert conflict.value.job.id == job.id
    store.finish(
        job.id,
        result={"version": "3", "metrics": {"test_accuracy": 1.0}, "promoted": True, "reason": "r"},
    )
    assert not store.finish(job.id, error="late")  # first outcome wins
    done = store.get(job.id)
    assert done.state == "succeeded" and done.error is None
    public = done.public()
    assert public["version"] == "3" and public["promotion"] == {"promoted": True, "reason": "r"}
    assert not {"pid", "node", "heartbeat_at"} & set(public) and public["data_path"] == "a.csv"
    assert store.create(tmp_path / "c.csv").state == "queued"  # free again
    assert [j.state for j in store.recent()] == ["queued", "succeeded"]


def test_concurrent_submissions_from_many_replicas_admit_exactly_one(url, tmp_path):
    replicas = [JobStore(url) for _ in range(8)]  # one engine each, as separate processes
    outcomes = at_once([partial(r.create, tmp_path / "x.csv") for r in replicas])
    results = [
        "conflict" if isinstance(o, ConflictError) else repr(o) if isinstance(o, Exception)
        else "created"
        for o in outcomes
    ]  # fmt: skip
    assert sorted(results) == ["conflict"] * 7 + ["created"]
    assert len(replicas[0].recent()) == 1


def test_job_whose_process_died_is_reported_failed_not_running(store, url, tmp_path):
    job = store.create(tmp_path / "a.csv")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.mark_running(job.id, proc.pid)
        assert store.get(job.id).state == "running"
    finally:
        proc.kill()
        proc.wait()
    reloaded = JobStore(url).get(job.id)  # as a restarted server would see it
    assert reloaded.state == "failed"
    assert "interrupted" in reloaded.error and "process is gone" in reloaded.error
    assert store.create(tmp_path / "b.csv").state == "queued"  # and it no longer blocks retrains


def test_running_job_of_a_dead_replica_elsewhere_expires_with_its_lease(url, tmp_path):
    """A replica on another machine died mid-retrain: no pid to check, only its heartbeat."""
    mine, other = JobStore(url, lease_s=1.0), JobStore(url, lease_s=1.0)
    job = other.create(tmp_path / "a.csv")
    other.mark_running(job.id, 1)
    rewrite(url, job.id, node="another-machine")
    done = threading.Event()
    keep_alive(other, job.id, done)  # the live replica renews the lease...
    try:
        time.sleep(2.5)
        assert mine.get(job.id).state == "running"  # ...so it stays running past the lease
        with pytest.raises(ConflictError):
            mine.create(tmp_path / "b.csv")
    finally:
        done.set()  # the replica dies: no more heartbeats
    time.sleep(1.5)
    expired = mine.get(job.id)
    assert expired.state == "failed" and expired.error.startswith("interrupted: no heartbeat")
    assert mine.create(tmp_path / "b.csv").state == "queued"
    assert not other.finish(job.id, result={"version": "9"})  # a late outcome changes nothing


def test_unreachable_database_is_a_clear_error_not_a_hang():
    store = JobStore(f"postgresql://iris:secret@127.0.0.1:{free_port()}/jobs")
    started = time.monotonic()
    with pytest.raises(JobsUnavailableError, match="job database is unreachable"):
        store.recent()
    with pytest.raises(JobsUnavailableError):
        store.create(__import__("pathlib").Path("a.csv"))
    assert time.monotonic() - started < 15
    assert "secret" not in repr(store)


@pytest.mark.parametrize("uri", ["mysql://u:pw@db/jobs", "db.example:5432/jobs"])
def test_a_jobs_uri_of_another_kind_is_refused_by_name(uri):
    from pydantic import ValidationError

    from training.settings import Settings

    with pytest.raises(ValidationError, match="IRIS_JOBS_URI must start with one of postgresql"):
        Settings(jobs_uri=uri)
    assert Settings(jobs_uri="postgresql://u:pw@db/jobs").jobs_url.startswith("postgresql://")
    assert Settings(jobs_uri="").jobs_url.startswith("sqlite:///")  # empty: the embedded default


def test_a_loop_uri_of_another_kind_is_refused_and_defaults_follow_the_jobs_database():
    from pydantic import ValidationError

    from training.settings import Settings

    with pytest.raises(ValidationError, match="IRIS_LOOP_URI must start with one of postgresql"):
        Settings(loop_uri="postgres://u:pw@db/loop")
    assert Settings(jobs_uri="postgresql://u@db/jobs").loop_url == "postgresql://u@db/jobs"
    assert Settings(loop_uri="sqlite:////x/loop.db", jobs_uri="postgresql://u@db/j").loop_url == (
        "sqlite:////x/loop.db"
    )
    assert Settings().loop_url.endswith("/var/loop.sqlite")


def test_a_started_retrain_is_watched_even_when_its_record_cannot_be_updated(tmp_path, monkeypatch):
    """The training process runs before the job is marked running: a database that fails
    then (a lock past its statement timeout) neither hides the job behind a 503 nor leaves
    its process unwatched. The process marks itself running, and its outcome is reaped."""
    import queue

    from serving.retrain_launcher import RetrainLauncher
    from training.settings import Settings

    monkeypatch.setenv("IRIS_HOME", str(tmp_path))
    monkeypatch.setenv("IRIS_JOBS_URI", f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    monkeypatch.setenv("IRIS_RETRAIN_DATA", str(tmp_path / "missing.csv"))  # fails at once
    settings = Settings()

    class Locked(JobStore):
        def mark_running(self, job_id: str, pid: int) -> None:
            raise JobsUnavailableError("canceling statement due to statement timeout")

    finished: queue.Queue = queue.Queue()
    launcher = RetrainLauncher(settings, Locked(settings.jobs_url), finished.put)
    job = launcher.launch()  # no exception: the job exists and its process runs
    assert job.state == "queued"
    reaped = finished.get(timeout=120)
    assert reaped.id == job.id and reaped.state == "failed", reaped
    assert "missing.csv" in (reaped.error or ""), reaped.error
