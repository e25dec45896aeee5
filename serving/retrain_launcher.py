"""Start retrain jobs as subprocesses and read their outcome when they end.

A job is created in the job store (single flight: a second one while one is active raises
:class:`serving.jobs.ConflictError`), then ``python -m serving.retrain_job`` runs the
pipeline and writes its own final record. A thread per job waits for the process (with the
``IRIS_RETRAIN_TIMEOUT_S`` limit) and reports the finished job to ``on_finished``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from serving.child_env import retrain_env
from serving.job_store_sql import JobStore
from serving.jobs import Job, JobsUnavailableError
from training.settings import PROJECT_DIR, Settings

logger = logging.getLogger(__name__)


class RetrainLauncher:
    def __init__(self, settings: Settings, jobs: JobStore, on_finished: Callable[[Job], None]):
        self.settings = settings
        self.jobs = jobs
        self.on_finished = on_finished

    def launch(self, with_feedback: bool = False) -> Job:
        """Create a job and start its training process.

        Raises:
            ConflictError: a retrain is already queued or running.
            JobsUnavailableError: the job database cannot be reached.
            OSError: the process could not start (the job is recorded as failed).
        """
        data_path = self.settings.retrain_data or self.settings.raw_data
        job = self.jobs.create(data_path)
        argv = [sys.executable, "-m", "serving.retrain_job", job.id]
        if with_feedback:
            argv.append("--with-feedback")
        try:
            proc = subprocess.Popen(argv, cwd=PROJECT_DIR, env=retrain_env(self.settings))
        except OSError as e:
            self.jobs.finish(job.id, error=f"could not start the training process: {e}")
            raise
        # Watched from now on, whatever the database says next: the reaper enforces the
        # timeout and records the outcome.
        threading.Thread(
            target=self._wait, args=(job.id, proc), name=f"retrain-{job.id[:8]}", daemon=True
        ).start()
        logger.info("Retrain job %s started (pid %d) on %s", job.id, proc.pid, Path(data_path).name)
        try:
            self.jobs.mark_running(job.id, proc.pid)  # the process marks itself running too
            return self.jobs.get(job.id) or job
        except JobsUnavailableError as e:  # it runs: say so, not "unavailable"
            logger.warning("Retrain job %s started; its record not updated yet: %s", job.id, e)
            return job

    def _wait(self, job_id: str, proc: subprocess.Popen) -> None:
        try:
            self._reap(job_id, proc)
        except JobsUnavailableError:
            logger.exception("Retrain job %s: outcome not read (job database unreachable)", job_id)

    def _reap(self, job_id: str, proc: subprocess.Popen) -> None:
        try:
            code = proc.wait(timeout=self.settings.retrain_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            self.jobs.finish(job_id, error=f"timed out after {self.settings.retrain_timeout_s:g} s")
        if code != 0:
            self.jobs.finish(job_id, error=f"training process exited with code {code}")
        job = self.jobs.get(job_id)
        if job is None:
            return
        logger.log(
            logging.INFO if job.state == "succeeded" else logging.ERROR,
            "Retrain job %s %s%s",
            job_id,
            job.state,
            f": {job.error}" if job.error else "",
        )
        self.on_finished(job)
