"""``python -m serving.retrain_job JOB_ID``: the retrain subprocess started by the service.

It runs the whole pipeline on the job's data and records its own outcome, so the record
is right even if the worker that started it has died meanwhile.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from serving.jobs import JobStore
from training.logs import configure_logging
from training.settings import get_settings

logger = logging.getLogger("serving.retrain_job")


def public_error(exc: BaseException, data_path: Path) -> str:
    """One line for the job record: no tracebacks, and no server paths beyond the file name."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for path in {str(data_path), str(data_path.resolve())}:
        text = text.replace(path, data_path.name)
    return f"{type(exc).__name__}: {text}"


def main(job_id: str) -> int:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_dir, "training.log")
    store = JobStore(settings.jobs_db)
    job = store.get(job_id)
    if job is None:
        logger.error("No retrain job %s in %s", job_id, settings.jobs_db)
        return 2
    store.mark_running(job_id, os.getpid())
    data_path = Path(job.data_path)
    logger.info(
        "Retrain job %s started on %s (MLflow HTTP: %s retries, %s s timeout)",
        job_id,
        data_path,
        os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "default"),
        os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "default"),
    )
    try:
        from training.pipeline import run

        result = run(settings, data_path)
    except Exception as e:
        logger.exception("Retrain job %s failed", job_id)
        store.finish(job_id, error=public_error(e, data_path))
        return 1
    store.finish(job_id, result=result.to_dict())
    logger.info("Retrain job %s succeeded: version %s (%s)", job_id, result.version, result.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
