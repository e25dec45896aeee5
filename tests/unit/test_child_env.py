"""Children of a worker get the MLflow client settings their own settings ask for."""

from __future__ import annotations

import os

from serving.child_env import fetch_env, retrain_env
from serving.reloader import ChampionWatcher
from serving.served_model import ModelHolder
from tests.unit.test_champion_watch import _served
from training.settings import Settings


def test_retrain_and_fetch_get_their_own_mlflow_http_settings(tmp_path):
    settings = Settings(
        home=tmp_path,
        retrain_mlflow_retries=4,
        retrain_mlflow_timeout_s=45,
        fetch_mlflow_retries=1,
        fetch_mlflow_timeout_s=2.5,
    )
    # What a worker (or its parent shell) may have in its environment must not win.
    inherited = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        "IRIS_ADMIN_TOKEN": "secret",
        "IRIS_FEEDBACK_TOKEN": "secret-too",
        "PATH": "/usr/bin",
    }
    retrain = retrain_env(settings, inherited)
    fetch = fetch_env(settings, inherited)
    assert retrain["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"
    assert retrain["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "45"
    assert fetch["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert fetch["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2.5"
    for env in (retrain, fetch):
        assert "IRIS_ADMIN_TOKEN" not in env and "IRIS_FEEDBACK_TOKEN" not in env
    assert retrain["PATH"] == fetch["PATH"] == "/usr/bin"


def test_default_retrain_settings_survive_a_running_watcher(tmp_path, monkeypatch):
    """The bug this replaces: the watcher set 0 retries / 5 s in os.environ, and the
    retrain's ``setdefault`` of 2 / 30 s then did nothing."""
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings(home=tmp_path, reload_interval_s=60)
    before = dict(os.environ)
    watcher = ChampionWatcher(settings, ModelHolder(_served("1")))
    watcher.start()
    try:
        assert dict(os.environ) == before  # the worker's own environment is left alone
        env = retrain_env(settings)
    finally:
        watcher.stop()
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
