"""``python -m serving.retrain_job JOB_ID``: the retrain subprocess started by the service.

It runs the whole pipeline on the job's data and records its own outcome, so the record
is right even if the worker that started it has died meanwhile. While it runs it renews the
job's heartbeat, which is how other replicas of a fleet tell a running job from a dead one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from serving.job_store_sql import JobStore
from serving.jobs import JobsUnavailableError
from training.logs import configure_logging, one_line
from training.settings import get_settings

logger = logging.getLogger("serving.retrain_job")


def public_error(exc: BaseException, data_path: Path) -> str:
    """One line for the job record: no tracebacks, and no server paths beyond the file name."""
    text = one_line(exc)
    for path in {str(data_path), str(data_path.resolve())}:
        text = text.replace(path, data_path.name)
    return text


def keep_alive(store: JobStore, job_id: str, done: threading.Event) -> threading.Thread:
    """Renew the job's lease every sixth of it until ``done`` (a missed beat is tolerated)."""

    def beat() -> None:
        while not done.wait(store.lease_s / 6):
            try:
                if not store.heartbeat(job_id):
                    return  # finished, or marked interrupted by someone else
            except JobsUnavailableError:
                logger.warning(
                    "Retrain job %s: heartbeat missed (job database unreachable)", job_id
                )

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    return thread


def main(job_id: str, with_feedback: bool = False) -> int:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_dir, "training.log")
    # No statement timeout here: nobody waits on this process's calls, and its outcome
    # must be recorded even behind a long lock.
    store = JobStore(settings.jobs_url, lease_s=settings.jobs_lease_s)
    job = store.get(job_id)
    if job is None:
        logger.error("No retrain job %s in %r", job_id, store)
        return 2
    store.mark_running(job_id, os.getpid())
    done = threading.Event()
    keep_alive(store, job_id, done)
    try:
        return _train(store, job_id, Path(job.data_path), settings, with_feedback)
    finally:
        done.set()


def _train(
    store: JobStore, job_id: str, data_path: Path, settings, with_feedback: bool = False
) -> int:
    logger.info(
        "Retrain job %s started on %s%s (MLflow HTTP: %s retries, %s s timeout)",
        job_id,
        data_path,
        " plus the labelled predictions" if with_feedback else "",
        os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "default"),
        os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "default"),
    )
    try:
        from training.pipeline import run

        result = run(settings, data_path, with_feedback=with_feedback)
    except Exception as e:
        logger.exception("Retrain job %s failed", job_id)
        store.finish(job_id, error=public_error(e, data_path))
        return 1
    store.finish(job_id, result=result.to_dict())
    logger.info("Retrain job %s succeeded: version %s (%s)", job_id, result.version, result.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], with_feedback="--with-feedback" in sys.argv[2:]))
