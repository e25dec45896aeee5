"""The environment of every process a serving worker starts, built in one place.

Workers never edit their own ``os.environ`` for values a child needs: an edit made for one
child (say, a fetch that should fail fast) would leak into every later child (a retrain
that should wait out a hiccup). Each child gets the worker's environment less its secrets,
plus the values its settings ask for, set explicitly so nothing inherited can override them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from training.settings import Settings

SECRETS = ("IRIS_ADMIN_TOKEN", "IRIS_FEEDBACK_TOKEN")
"""Never handed to a child: the pipeline does not need them, and children log freely."""


def _base(environ: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    for key in SECRETS:
        env.pop(key, None)
    # GitPython (imported by MLflow) warns at length when no git binary is found.
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return env


def _mlflow_http(env: dict[str, str], retries: int, timeout_s: float) -> dict[str, str]:
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = f"{timeout_s:g}"
    return env


def retrain_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the retrain subprocess (``serving.retrain_job``)."""
    return _mlflow_http(
        _base(environ), settings.retrain_mlflow_retries, settings.retrain_mlflow_timeout_s
    )


def fetch_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the champion-fetch subprocess (``serving.fetch_model``)."""
    return _mlflow_http(
        _base(environ), settings.fetch_mlflow_retries, settings.fetch_mlflow_timeout_s
    )


def capture_sink_env(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of a worker's capture sink (``serving.capture_sink``): the worker's own
    capture settings, resolved, so the sink writes exactly where the worker spools."""
    env = _base(environ)
    env.update(
        IRIS_HOME=str(settings.home.resolve()),
        IRIS_LOG_DIR=str(settings.log_dir.resolve()),
        IRIS_CAPTURE_DIR=str(settings.capture_dir.resolve()),
        IRIS_CAPTURE_MAX_PENDING=str(settings.capture_max_pending),
        IRIS_CAPTURE_RETENTION_DAYS=str(settings.capture_retention_days),
        IRIS_CAPTURE_MAX_BYTES=str(settings.capture_max_bytes),
        IRIS_CAPTURE_SINK_NICE=str(settings.capture_sink_nice),
        IRIS_LOOP_URI=settings.loop_url,
        IRIS_DB_STATEMENT_TIMEOUT_S=str(settings.db_statement_timeout_s),
    )
    return env
