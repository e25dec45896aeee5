"""Retrain jobs: persisted in SQLite, run as a subprocess, one at a time across workers.

The training subprocess writes its own final record, so a job finishes correctly even if
the worker that started it dies. A record left ``running`` whose process is gone (server
restart, SIGKILL) is reported as ``failed`` the next time anyone looks, never stuck.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
ACTIVE = (QUEUED, RUNNING)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    pid_start TEXT,
    data_path TEXT NOT NULL,
    result TEXT,
    error TEXT
)
"""


@dataclass
class Job:
    id: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None
    pid_start: str | None
    data_path: str
    result: dict | None
    error: str | None

    def public(self) -> dict:
        """The status document clients see (no pids, no server paths)."""
        data = asdict(self)
        for key in ("pid", "pid_start"):
            data.pop(key)
        data["data_path"] = Path(self.data_path).name
        for key in ("created_at", "started_at", "finished_at"):
            data[key] = _iso(data[key])
        result = self.result or {}
        data["version"] = result.get("version")
        data["metrics"] = result.get("metrics")
        data["promotion"] = (
            {"promoted": result.get("promoted"), "reason": result.get("reason")} if result else None
        )
        return data


class ConflictError(Exception):
    """A job is already queued or running; ``job`` is that job."""

    def __init__(self, job: Job):
        super().__init__(f"retrain job {job.id} is already {job.state}")
        self.job = job


def process_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (guards against PID reuse), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # zombie: finished, not yet reaped
        return None
    return fields[19]


class JobStore:
    def __init__(self, path: Path):
        self.path = path
        self._initialised = False

    @contextmanager
    def _connect(self):
        with closing(sqlite3.connect(self._ensure(), timeout=30, isolation_level=None)) as conn:
            conn.row_factory = sqlite3.Row
            yield conn

    def _ensure(self) -> Path:
        """Create the folder, table and WAL mode once per store (both persist in the file)."""
        if not self._initialised:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(SCHEMA)
            self._initialised = True
        return self.path

    def create(self, data_path: Path) -> Job:
        """Insert a queued job unless one is active (checked and inserted atomically).

        Raises:
            ConflictError: with the active job.
        """
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for row in conn.execute(
                    "SELECT * FROM jobs WHERE state IN (?, ?)", ACTIVE
                ).fetchall():
                    job = self._reconcile(conn, _job(row))
                    if job.state in ACTIVE:
                        raise ConflictError(job)
                job_id = uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO jobs (id, state, created_at, data_path) VALUES (?, ?, ?, ?)",
                    (job_id, QUEUED, time.time(), str(data_path)),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return self._reconcile(conn, _job(row)) if row else None

    def recent(self, limit: int = 20) -> list[Job]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
            return [self._reconcile(conn, _job(r)) for r in rows]

    def mark_running(self, job_id: str, pid: int) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, started_at = ?, pid = ?, pid_start = ?"
                " WHERE id = ? AND state = ?",
                (RUNNING, time.time(), pid, process_start_time(pid), job_id, QUEUED),
            )

    def finish(self, job_id: str, *, result: dict | None = None, error: str | None = None) -> bool:
        """Record the outcome once; returns False if the job was already finished."""
        state = FAILED if error is not None else SUCCEEDED
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?"
                " WHERE id = ? AND state IN (?, ?)",
                (
                    state,
                    time.time(),
                    json.dumps(result) if result else None,
                    error,
                    job_id,
                    *ACTIVE,
                ),
            )
            return cur.rowcount == 1

    def _reconcile(self, conn: sqlite3.Connection, job: Job) -> Job:
        """Turn a job whose process is gone into a failure instead of leaving it running."""
        if job.state == RUNNING and job.pid and process_start_time(job.pid) != job.pid_start:
            reason = "interrupted: the training process is gone (server restart or killed)"
        elif job.state == QUEUED and time.time() - job.created_at > 60:
            reason = "interrupted: the job never started"
        else:
            return job
        conn.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ? AND state = ?",
            (FAILED, time.time(), reason, job.id, job.state),
        )
        logger.warning("Retrain job %s marked failed: %s", job.id, reason)
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return _job(row)


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["result"] = json.loads(data["result"]) if data["result"] else None
    return Job(**data)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
