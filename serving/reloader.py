"""Follow the registry's ``champion`` alias and hot-swap the served model.

Each worker runs one daemon thread. Every ``IRIS_RELOAD_INTERVAL_S`` it asks the registry
which version is champion; when that differs from what it serves, it downloads the version,
loads it safely, compiles and parity-checks it, and only then swaps it in. Any failure
(registry down, tampered file, parity) is logged and the current model keeps serving.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from serving.runtime import ModelHolder, ModelIdentity, ServedModel, load_model_dir
from training.settings import Settings

logger = logging.getLogger(__name__)


def registry_configured(settings: Settings) -> bool:
    """A SQLite registry file that does not exist is 'none configured' (and is not created)."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


class ChampionWatcher:
    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        on_swap: Callable[[ServedModel, ServedModel], None] | None = None,
    ):
        self.settings = settings
        self.holder = holder
        self.on_swap = on_swap
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="champion-watcher", daemon=True)

    def start(self) -> None:
        # Fail fast when the registry is down instead of MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Check now instead of at the next interval (after a local retrain)."""
        self._wake.set()

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            swapped = self.check_once()
            if first or swapped:
                # The first check imports MLflow (a large heap) and a swap loads a model:
                # both live as long as the worker. Freeze them out of future garbage
                # collections, whose full passes otherwise make the p99 tail.
                gc.collect()
                gc.freeze()
                first = False
            self._wake.wait(self.settings.reload_interval_s)
            self._wake.clear()

    def check_once(self) -> bool:
        """One poll; True if a new model was swapped in. Never raises."""
        with self._lock:
            try:
                return self._check()
            except Exception as e:
                message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if message != self._last_error:  # log each distinct outage once, not every poll
                    logger.warning(
                        "Registry check failed; still serving v%s: %s",
                        self.holder.current.identity.version,
                        message,
                    )
                    logger.debug("Registry check traceback", exc_info=True)
                self._last_error = message
                return False

    def _check(self) -> bool:
        if not registry_configured(self.settings):
            return False
        import mlflow
        from mlflow import MlflowClient

        # This thread is the only MLflow user in a serving worker, so global URIs are safe.
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        mlflow.set_registry_uri(self.settings.tracking_uri)
        client = MlflowClient()
        name = self.settings.model_name
        mv = client.get_model_version_by_alias(name, "champion")
        if self._last_error is not None:
            logger.info("Registry reachable again")
            self._last_error = None
        current = self.holder.current.identity
        if str(mv.version) == current.version and mv.run_id == current.run_id:
            return False
        identity = ModelIdentity(name, str(mv.version), "champion", mv.run_id, "registry")
        logger.info("Champion moved to v%s (serving v%s); loading it", mv.version, current.version)
        with tempfile.TemporaryDirectory(prefix="iris-reload-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}", dst_path=tmp
            )
            model = load_model_dir(Path(path), identity)
        previous = self.holder.swap(model)
        if self.on_swap:
            self.on_swap(previous, model)
        return True
