"""The fleet's shared PostgreSQL stuck rather than down: its tables locked (a migration's
``LOCK TABLE``), then the whole server frozen. Predictions go on at once, ``POST
/feedback`` and ``GET /jobs`` answer 503 within their bound instead of hanging, the
capture files go on being written, and once the database answers again every answer
captured meanwhile is indexed: its label is taken. Last, the server is stopped while the
database is frozen and calls are stuck in it: it exits by itself, its capture sink too,
and the answers it could not index wait in the spool."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
import sqlalchemy as sa

from harness.servers import bento_server
from serving.capture_spool import index_rows, read_spool
from serving.capture_table import spool_rows
from serving.db_calls import MARGIN_S
from tests.utils.load import GOOD
from tests.utils.postgres import postgres_server, server_processes

pytestmark = pytest.mark.integration

TOKEN = "stuck-db-token-5e"
ADMIN = "stuck-db-admin-token-7a"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TABLES = "iris_answers, iris_labels, iris_retrain_jobs"
STATEMENT_S = 2.0
"""IRIS_DB_STATEMENT_TIMEOUT_S here; the server's bound on a frozen database is this
plus ``MARGIN_S``."""
PREDICTIONS = 20


def predict_all(client: httpx.Client) -> tuple[list[str], float]:
    """``PREDICTIONS`` answers, all 200; their ids and the slowest answer's seconds."""
    ids, slowest = [], 0.0
    for _ in range(PREDICTIONS):
        started = time.monotonic()
        answer = client.post("/predict", json=GOOD, timeout=10)
        slowest = max(slowest, time.monotonic() - started)
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["prediction_id"])
    return ids, slowest


def jobs(client: httpx.Client) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = client.get("/jobs/", headers={"authorization": f"Bearer {ADMIN}"}, timeout=60)
    return answer, time.monotonic() - started


def feedback(client: httpx.Client, ids: list[str]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    body = [{"prediction_id": pid, "species": "Iris-setosa"} for pid in ids]
    answer = client.post("/feedback", json=body, headers=AUTH, timeout=60)
    return answer, time.monotonic() - started


def labelled_once_answering(client: httpx.Client, ids: list[str], within_s: float) -> float:
    """Send labels for ``ids`` until they are taken (404: not indexed yet; 503: the
    database still failing); returns the seconds it took."""
    started = time.monotonic()
    while True:
        answer, _ = feedback(client, ids)
        if answer.status_code == 200:
            # A call that timed out may have stored them after its 503: unchanged, then.
            taken = answer.json()
            assert taken["added"] + taken["unchanged"] == len(ids), answer.text
            return time.monotonic() - started
        assert answer.status_code in (404, 503), answer.text
        assert time.monotonic() - started < within_s, answer.text
        time.sleep(0.5)


@contextlib.contextmanager
def tables_locked(uri: str):
    """Another session holds the loop and job tables in ACCESS EXCLUSIVE mode (no read, no
    write)."""
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"LOCK TABLE {TABLES} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def frozen(uri: str):
    """Every process of the test cluster stopped (SIGSTOP): connections stay open, nothing
    answers, no statement timeout can fire. The postmaster first, so it forks no process
    after the list is taken; one that exits meanwhile is skipped. Always resumed."""
    stopped = []
    try:
        postmaster, *_ = server_processes(uri)
        for proc in [postmaster, *postmaster.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGSTOP)
                stopped.append(proc)
        yield
    finally:
        for proc in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)


def captured_ids(captures: Path) -> set[str]:
    if not any(captures.glob("date=*")):
        return set()
    return set(pd.read_parquet(captures, columns=["prediction_id"])["prediction_id"])


def written_while_frozen(captures: Path, ids: list[str], within_s: float) -> float:
    """Seconds until every one of ``ids`` is in the capture files."""
    started = time.monotonic()
    while not set(ids) <= captured_ids(captures):
        assert time.monotonic() - started < within_s, "answers not written to Parquet"
        time.sleep(0.5)
    return time.monotonic() - started


def stopped_by_itself(server, within_s: float) -> float:
    """SIGTERM the server's process group and wait for every one of its processes to
    exit; returns the seconds it took. Processes still alive after ``within_s`` are
    killed and fail the test."""
    leader = psutil.Process(server.process.pid)
    processes = [leader, *leader.children(recursive=True)]
    names = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            names[proc.pid] = " ".join(proc.cmdline()[:4])
    started = time.monotonic()
    os.killpg(server.process.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=within_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    assert not alive, [names.get(p.pid, p.pid) for p in alive]
    return time.monotonic() - started


def test_stuck_shared_database_costs_feedback_and_jobs_a_bounded_503_and_loses_nothing(
    trained_home, tmp_path, record_property
):
    with postgres_server() as database:
        env = {
            **trained_home.env,
            "IRIS_FEEDBACK_TOKEN": TOKEN,
            "IRIS_ADMIN_TOKEN": ADMIN,
            "IRIS_LOOP_URI": database,
            "IRIS_JOBS_URI": database,
            "IRIS_DB_STATEMENT_TIMEOUT_S": str(STATEMENT_S),
            "IRIS_CAPTURE_DIR": str(tmp_path / "captures"),
            "IRIS_CAPTURE_FLUSH_S": "0.2",
            "IRIS_FOLLOW_REGISTRY": "false",
            # The monitor polls once, at start: it takes no pooled connection the frozen
            # phase's calls expect to find (a new one would fail on connect instead).
            "IRIS_LOOP_INTERVAL_S": "300",  # the most allowed; the test takes about 80 s
        }
        with (
            bento_server(env, tmp_path / "logs", workers=1) as server,
            httpx.Client(base_url=server.url) as client,
        ):
            before, _ = predict_all(client)
            assert jobs(client)[0].status_code == 200  # and its table exists
            labelled_once_answering(client, before, within_s=30)  # the database works

            with tables_locked(database):
                during_lock, lock_slowest = predict_all(client)
                locked, locked_s = feedback(client, during_lock)
                jobs_locked, jobs_locked_s = jobs(client)
                # Long enough that the sink's index of these answers fails too: their
                # files wait for the database and are indexed by its retry.
                time.sleep(STATEMENT_S + 1)
            assert lock_slowest < 2, lock_slowest  # predictions never wait on the database
            assert locked.status_code == 503, locked.text
            assert locked.json()["error"]["message"].startswith(
                "the feedback database is unavailable"
            )
            assert locked.headers["retry-after"] == "5"
            assert locked_s < STATEMENT_S + 4, locked_s  # the server cancelled the statement
            assert jobs_locked.status_code == 503, jobs_locked.text
            assert jobs_locked.json()["error"]["code"] == "jobs_unavailable"
            assert "did not answer" not in jobs_locked.json()["error"]["message"]  # cancelled
            assert jobs_locked_s < STATEMENT_S + 4, jobs_locked_s
            lock_recovery_s = labelled_once_answering(client, during_lock, within_s=60)

            captures = tmp_path / "captures"
            with frozen(database):
                during_freeze, freeze_slowest = predict_all(client)
                stuck, stuck_s = feedback(client, during_freeze)
                jobs_stuck, jobs_stuck_s = jobs(client)
                # The sink's index insert hangs as the handlers' calls do; it gives up as
                # they do, and writes the files all the same.
                frozen_written_s = written_while_frozen(
                    captures, during_freeze, within_s=STATEMENT_S + MARGIN_S + 10
                )
            # Bounded by the server itself: pooled connections hang (their pre-ping is
            # never answered), so each call gives up after its wait.
            assert freeze_slowest < 2, freeze_slowest
            assert stuck.status_code == 503, stuck.text
            assert stuck.json()["error"]["message"].startswith(
                "the feedback database did not answer within"
            )
            assert stuck_s < STATEMENT_S + MARGIN_S + 3, stuck_s
            assert jobs_stuck.status_code == 503, jobs_stuck.text
            assert jobs_stuck.json()["error"]["code"] == "jobs_unavailable"
            assert jobs_stuck.headers["retry-after"] == "5"
            assert "did not answer within" in jobs_stuck.json()["error"]["message"]
            assert jobs_stuck_s < STATEMENT_S + MARGIN_S + 3, jobs_stuck_s
            assert jobs(client)[0].status_code == 200
            freeze_recovery_s = labelled_once_answering(client, during_freeze, within_s=60)
            # Every label stored counts once, also those a call committed after its 503.
            metrics = client.get("/metrics", timeout=10).text
            counted = re.findall(r"^iris_feedback_total\{[^}]*\} ([0-9.]+)$", metrics, re.M)
            assert sum(map(float, counted)) == 3 * PREDICTIONS, counted

            assert client.get("/readyz", timeout=10).status_code == 200

            with frozen(database):
                last, _ = predict_all(client)
                stuck_again, _ = feedback(client, last)  # its thread stays in the database
                assert stuck_again.status_code == 503, stuck_again.text
                stop_s = stopped_by_itself(server, within_s=STATEMENT_S + MARGIN_S + 20)
        captured = pd.read_parquet(captures)
        served = set(before + during_lock + during_freeze + last)
        assert set(captured["prediction_id"]) == served  # every answer captured, once
        assert len(captured) == len(served)
        # What the sink could not index waits for the next sink (which adopts the spool).
        waiting = set()
        for path in (captures / ".spool").glob("*.unindexed"):
            spooled = read_spool(path)
            waiting |= set(index_rows(spooled, spool_rows(spooled)).answer_id)
        assert set(last) <= waiting, waiting
    record_property(
        "reliability",
        f"shared database locked: /predict 200 (slowest {lock_slowest:.2f} s), /feedback 503 "
        f"in {locked_s:.1f} s, /jobs 503 in {jobs_locked_s:.1f} s, labels taken "
        f"{lock_recovery_s:.1f} s after the unlock; frozen: "
        f"/predict 200 (slowest {freeze_slowest:.2f} s), /feedback 503 in {stuck_s:.1f} s, "
        f"/jobs 503 in {jobs_stuck_s:.1f} s, its answers in Parquet {frozen_written_s:.1f} s "
        f"after, labels taken {freeze_recovery_s:.1f} s after the thaw; {len(served)} answers "
        f"captured, none lost; stopped while frozen with calls stuck: exited in {stop_s:.1f} s",
    )
