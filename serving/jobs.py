"""Retrain job records and what makes a job count as alive.

A job is a row in a SQL table (:mod:`serving.job_store_sql`): an SQLite file by default,
or the fleet's PostgreSQL (``IRIS_JOBS_URI``) so that every replica sees the same jobs and
at most one retrain runs in the whole fleet.

The training subprocess writes its own final record, so a job finishes correctly even if
the worker that started it dies. A record left ``running`` whose process is gone is
reported ``failed`` ("interrupted") the next time anyone looks, never stuck: on the same
machine the process id says so at once; from any other replica, the job's heartbeat going
stale (older than the lease) does.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
ACTIVE = (QUEUED, RUNNING)


@dataclass
class Job:
    id: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None
    pid_start: str | None
    node: str | None
    heartbeat_at: float | None
    data_path: str
    result: dict | None
    error: str | None

    def public(self) -> dict:
        """The status document clients see (no pids, no nodes, no server paths)."""
        data = asdict(self)
        for key in ("pid", "pid_start", "node", "heartbeat_at"):
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


class JobsUnavailableError(Exception):
    """The job database cannot be reached; retrain and job status are unavailable."""


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


@functools.cache
def node_id() -> str:
    """Which process-id space this process lives in: boot id plus PID namespace.

    Two records with the same node can check each other's pids in /proc; containers on one
    host (separate PID namespaces) and other machines cannot, and rely on the heartbeat.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return f"unknown-{os.getpid()}-{time.time()}"  # never equal to another process's
    return f"{boot}/{pid_ns}"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
