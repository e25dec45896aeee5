"""Retrain job records in SQL (SQLAlchemy Core): an SQLite file, or a shared PostgreSQL.

Single flight is the database's job, not ours: the ``active`` column is 1 while a job is
queued or running and NULL once it is finished, under a unique index. Of any number of
replicas inserting at once, exactly one insert succeeds; the others get an integrity
error and report the job that holds the slot (409). No lock is held across requests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc

from serving.jobs import (
    ACTIVE,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    ConflictError,
    Job,
    JobsUnavailableError,
    node_id,
    process_start_time,
)
from training.sql import database_url, make_engine

logger = logging.getLogger(__name__)

QUEUED_GRACE_S = 60.0
"""A queued job whose training process has not reported in this long never started."""

metadata = sa.MetaData()
jobs_table = sa.Table(
    "iris_retrain_jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("active", sa.SmallInteger, nullable=True, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("pid", sa.Integer),
    sa.Column("pid_start", sa.String(32)),
    sa.Column("node", sa.String(128)),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("data_path", sa.Text, nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
)
T = jobs_table.c


class JobStore:
    """Job records behind one SQLAlchemy URL (``sqlite:///...`` or ``postgresql://...``).

    Args:
        url: Database URL, or a Path to an SQLite file.
        lease_s: A running job whose heartbeat is older than this is reported failed.
        statement_s: On PostgreSQL, the longest a statement may run or wait for a lock
            (then :class:`JobsUnavailableError`, as for an unreachable database).
        sqlite_busy_s: On SQLite, the longest a statement waits for a lock.
    """

    def __init__(
        self,
        url: str | Path,
        lease_s: float = 30.0,
        statement_s: float | None = None,
        sqlite_busy_s: float = 30.0,
    ):
        self.url = database_url(url)
        self.lease_s = lease_s
        self.statement_s = statement_s
        self.sqlite_busy_s = sqlite_busy_s
        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"JobStore({self.url.render_as_string(hide_password=True)})"

    # -- connection ----------------------------------------------------------------

    def _make_engine(self) -> sa.Engine:
        """The engine (no connection yet): training.sql's bounded waits."""
        return make_engine(self.url, sqlite_busy_s=self.sqlite_busy_s, statement_s=self.statement_s)

    def _ensure_schema(self, engine: sa.Engine) -> None:
        try:
            metadata.create_all(engine, checkfirst=True)
        except exc.DBAPIError:
            # Replicas starting together race to create the table: losing is fine. (An
            # unreachable database fails the check below too, and is reported as such.)
            if not sa.inspect(engine).has_table(jobs_table.name):
                raise
        self._schema_ready = True

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        """A transaction; an unreachable database becomes :class:`JobsUnavailableError`."""
        try:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self._make_engine()
            if not self._schema_ready:
                self._ensure_schema(self._engine)
            with self._engine.begin() as conn:
                yield conn
        except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as e:
            where = self.url.render_as_string(hide_password=True)
            logger.error("Job database %s unavailable: %s", where, str(e).splitlines()[0])
            raise JobsUnavailableError(
                "the retrain job database is unreachable; retrain and job status are"
                " unavailable until it is back (predictions are not affected)"
            ) from e

    # -- records -------------------------------------------------------------------

    def create(self, data_path: Path) -> Job:
        """Insert a queued job unless one is active anywhere that shares this database.

        Raises:
            ConflictError: with the active job.
            JobsUnavailableError: the database cannot be reached.
        """
        for _ in range(3):
            job_id, now = uuid.uuid4().hex, time.time()
            row = {
                "id": job_id,
                "state": QUEUED,
                "active": 1,
                "created_at": now,
                "heartbeat_at": now,
                "node": node_id(),
                "data_path": str(data_path),
            }
            try:
                with self._begin() as conn:
                    conn.execute(jobs_table.insert().values(**row))
                return self.get(job_id)
            except exc.IntegrityError:
                holder = self._active()
                if holder is not None:
                    raise ConflictError(holder) from None
                # The holder was stale and has just been marked failed: try again.
        raise ConflictError(self._active() or self.get(job_id))

    def get(self, job_id: str) -> Job | None:
        with self._begin() as conn:
            row = conn.execute(sa.select(jobs_table).where(T.id == job_id)).mappings().first()
        return self._reconcile(_job(row)) if row else None

    def recent(self, limit: int = 20) -> list[Job]:
        query = sa.select(jobs_table).order_by(T.created_at.desc()).limit(limit)
        with self._begin() as conn:
            rows = conn.execute(query).mappings().all()
        return [self._reconcile(_job(r)) for r in rows]

    def mark_running(self, job_id: str, pid: int) -> None:
        now = time.time()
        self._update(
            job_id,
            (QUEUED,),
            state=RUNNING,
            started_at=now,
            heartbeat_at=now,
            pid=pid,
            pid_start=process_start_time(pid),
            node=node_id(),
        )

    def heartbeat(self, job_id: str) -> bool:
        """Renew the job's lease; False once the job is no longer active."""
        return self._update(job_id, ACTIVE, heartbeat_at=time.time())

    def finish(self, job_id: str, *, result: dict | None = None, error: str | None = None) -> bool:
        """Record the outcome once; returns False if the job was already finished."""
        return self._update(
            job_id,
            ACTIVE,
            state=FAILED if error is not None else SUCCEEDED,
            active=None,
            finished_at=time.time(),
            result=json.dumps(result) if result else None,
            error=error,
        )

    # -- liveness ------------------------------------------------------------------

    def _active(self) -> Job | None:
        with self._begin() as conn:
            row = conn.execute(sa.select(jobs_table).where(T.active == 1)).mappings().first()
        job = self._reconcile(_job(row)) if row else None
        return job if job is not None and job.state in ACTIVE else None

    def _reconcile(self, job: Job) -> Job:
        """Turn a job whose process is gone into a failure instead of leaving it active."""
        reason = self._why_dead(job)
        if reason is None:
            return job
        failed = {"state": FAILED, "active": None, "finished_at": time.time(), "error": reason}
        if self._update(job.id, (job.state,), **failed):
            logger.warning("Retrain job %s marked failed: %s", job.id, reason)
        return self.get(job.id) or job

    def _why_dead(self, job: Job) -> str | None:
        if job.state not in ACTIVE:
            return None
        age = time.time() - (job.heartbeat_at or job.created_at)
        local = job.state == RUNNING and job.pid and job.node == node_id()
        if local and process_start_time(job.pid) != job.pid_start:
            return "interrupted: the training process is gone (server restart or killed)"
        if age > self.lease_s:
            return (
                f"interrupted: no heartbeat for {age:.0f} s (the replica running it stopped"
                " or lost the job database)"
            )
        if job.state == QUEUED and time.time() - job.created_at > QUEUED_GRACE_S:
            return "interrupted: the job never started"
        return None

    def _update(self, job_id: str, states: tuple[str, ...], **values) -> bool:
        where = sa.and_(T.id == job_id, T.state.in_(states))
        with self._begin() as conn:
            return conn.execute(jobs_table.update().where(where).values(**values)).rowcount == 1


def _job(row) -> Job:
    data = dict(row)
    data.pop("active")
    data["result"] = json.loads(data["result"]) if data["result"] else None
    return Job(**data)
