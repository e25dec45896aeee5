"""Retrain job records: single flight, outcomes, and jobs whose process died."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from serving.jobs import ConflictError, JobStore


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "var" / "jobs.sqlite")


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
    assert "pid" not in public and public["data_path"] == "a.csv"
    assert store.create(tmp_path / "c.csv").state == "queued"  # free again


def test_concurrent_submissions_admit_exactly_one(store, tmp_path):
    results: list[str] = []

    def submit() -> None:
        try:
            store.create(tmp_path / "x.csv")
            results.append("created")
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 7 + ["created"]


def test_job_whose_process_died_is_reported_failed_not_running(store, tmp_path):
    job = store.create(tmp_path / "a.csv")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.mark_running(job.id, proc.pid)
        assert store.get(job.id).state == "running"
    finally:
        proc.kill()
        proc.wait()
    reloaded = JobStore(store.path).get(job.id)  # as a restarted server would see it
    assert reloaded.state == "failed"
    assert "interrupted" in reloaded.error
    assert store.create(tmp_path / "b.csv").state == "queued"  # and it no longer blocks retrains
