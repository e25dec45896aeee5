"""The Open Inference Protocol's model repository extension, for our one model.

- index: the served model, its champion version and state (``READY``, or
  ``UNAVAILABLE`` with the reason); no token needed, like metadata.
- unload (admin token): stop serving the model. Every model route then answers
  ``UNAVAILABLE`` (HTTP 503) and model-ready says not ready, on every worker.
- load (admin token): serve it again, and check the registry for a new champion now.

Workers are separate processes and a request reaches only one of them, so the unloaded
state is one flag file in the server's state folder (``IRIS_HOME/var``), which every
worker reads at most every :data:`RECHECK_S` seconds. The server removes it at start-up
(``service.py``): like Triton and MLServer, an unload lasts until load or restart.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from serving.auth import Denied, check_bearer
from serving.oip.protocol import InferError
from serving.served_model import ServedModel
from training.settings import Settings, get_settings

RECHECK_S = 0.5
FLAG_NAME = "oip-model-unloaded"


def flag_path(settings: Settings) -> Path:
    return Path(settings.home) / "var" / FLAG_NAME


class Repository:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.flag = flag_path(settings)
        self._checked = (-RECHECK_S, False)  # (monotonic time, unloaded)

    def unloaded(self) -> bool:
        at, value = self._checked
        now = time.monotonic()
        if now - at >= RECHECK_S:
            value = self.flag.exists()
            self._checked = (now, value)
        return value

    def check_available(self, name: str) -> None:
        """Raise UNAVAILABLE when the model has been unloaded."""
        if self.unloaded():
            raise InferError(
                f"model {name!r} is unloaded; POST /v2/repository/models/{name}/load to serve it",
                "unavailable",
            )

    def authorize(self, authorization: str | None) -> Denied | None:
        return check_bearer(
            authorization,
            self.settings.admin_token,
            disabled="model load/unload is disabled on this server: set IRIS_ADMIN_TOKEN"
            " to enable it",
        )

    def check_name(self, requested: str, served: str) -> None:
        if requested != served:
            raise InferError(
                f"unknown model {requested!r}; this server serves {served!r}", "not_found"
            )

    def unload(self) -> None:
        self.flag.parent.mkdir(parents=True, exist_ok=True)
        self.flag.touch()
        self._checked = (time.monotonic(), True)

    def load(self) -> None:
        self.flag.unlink(missing_ok=True)
        self._checked = (time.monotonic(), False)

    def index(self, model: ServedModel, *, ready_only: bool = False) -> list[dict[str, str]]:
        unloaded = self.unloaded()
        if ready_only and unloaded:
            return []
        return [
            {
                "name": model.identity.name,
                "version": model.identity.version,
                "state": "UNAVAILABLE" if unloaded else "READY",
                "reason": "unloaded" if unloaded else "",
            }
        ]


def clear(settings: Settings) -> None:
    """Forget an unload from a previous run (called once, before workers start)."""
    flag_path(settings).unlink(missing_ok=True)


@lru_cache
def get_repository() -> Repository:
    return Repository(get_settings())
