"""Registered versions other than the champion, for ``/v2/models/NAME/versions/V`` routes.

The champion answers from ``holder.current``. Any other version is loaded on first use
through the fetch a new champion takes (``serving.model_cache.fetch``: a subprocess
downloads it into a temporary folder, loads it with skops and our trusted types, checks
its ONNX export; then the worker loads the export and replays its parity check), and kept
in a small LRU of ``IRIS_LOADED_VERSIONS`` models per worker (0 serves the champion only).

Loading costs a subprocess that imports MLflow, so a worker runs one load at a time, and
a version that does not exist (``NOT_FOUND``) or failed to load is not tried again for
:data:`RETRY_S` seconds: random version numbers cannot make a worker spawn processes.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from serving import model_cache
from serving.child_env import fetch_env
from serving.model_cache import FetchError
from serving.oip.protocol import InferError
from serving.oip.repository import get_repository
from serving.served_model import ModelHolder, ModelIdentity, ServedModel, load_model_dir
from training.settings import Settings

logger = logging.getLogger(__name__)

TRANSIENT_RETRY_S = 5.0
"""Back-off after a fetch failure that may pass (registry down, timeout)."""
MAX_REMEMBERED = 1000
"""Failed versions remembered per worker (the oldest are forgotten first)."""
RETRY_S = 60.0


class VersionCache:
    """The champion plus up to ``capacity`` other versions, loaded on demand."""

    def __init__(self, settings: Settings, holder: ModelHolder, capacity: int):
        self.settings = settings
        self.holder = holder
        self.capacity = capacity
        self._models: OrderedDict[str, ServedModel] = OrderedDict()
        self._failed: dict[str, tuple[float, InferError]] = {}
        self._lock = asyncio.Lock()

    def loaded(self) -> list[str]:
        """Versions held besides the champion, least recently used first."""
        return list(self._models)

    async def get(self, version: str) -> ServedModel:
        """The model for ``version`` ("" = the champion).

        Raises:
            InferError: ``not_found`` for a version the registry does not have, or one
                that cannot be served here.
        """
        current = self.holder.current
        if not version or version == current.identity.version:
            return current
        # Registry versions are positive integers: "01" and "1" are one version, and
        # anything else is refused before any process is started for it.
        if not (version.isascii() and version.isdigit() and len(version) <= 9):
            raise _not_served(current, version)
        version = str(int(version))
        if version == current.identity.version:
            return current
        challenger = self.holder.challenger
        if challenger is not None and version == challenger.identity.version:
            return challenger  # already loaded and checked beside the champion
        if self.capacity == 0:
            raise _not_served(current, version)
        model = self._hit(version)
        if model is not None:
            return model
        async with self._lock:
            model = self._hit(version)  # another request may have loaded it meanwhile
            if model is None:
                model = await self._load(version)
        return model

    def _hit(self, version: str) -> ServedModel | None:
        model = self._models.get(version)
        if model is not None:
            self._models.move_to_end(version)
            return model
        failed = self._failed.get(version)
        if failed is not None and time.monotonic() < failed[0]:
            raise failed[1]
        return None

    async def _load(self, version: str) -> ServedModel:
        try:
            model = await asyncio.to_thread(self._fetch_and_load, version)
        except FetchError as e:
            if e.missing or e.permanent:
                error = InferError(
                    f"model {self.settings.model_name!r} has no version {version!r}"
                    if e.missing
                    else f"version {version!r} cannot be served: {e}",
                    "not_found",
                )
                wait = RETRY_S
            else:  # the registry or the network: it may pass, so 503 and a short back-off
                error = InferError(
                    f"version {version!r} could not be fetched now; retry shortly ({e})",
                    "unavailable",
                )
                wait = TRANSIENT_RETRY_S
            self._failed[version] = (time.monotonic() + wait, error)
            while len(self._failed) > MAX_REMEMBERED:
                self._failed.pop(next(iter(self._failed)))
            logger.warning("Version %s not loaded: %s", version, e)
            raise error from None
        self._models[version] = model
        while len(self._models) > self.capacity:
            evicted, _ = self._models.popitem(last=False)
            logger.info("Unloaded version %s (IRIS_LOADED_VERSIONS=%d)", evicted, self.capacity)
        return model

    def _fetch_and_load(self, version: str) -> ServedModel:
        name = self.settings.model_name
        identity = ModelIdentity(name, version, "version", "", "registry")
        # Any client can name a version: fetched into a temporary folder, not the server's
        # cache, so these loads never hold the champion's fetch lock or evict its folder.
        with tempfile.TemporaryDirectory(prefix="iris-version-") as tmp:
            path = model_cache.fetch(name, version, Path(tmp) / "model", fetch_env(self.settings))
            model = load_model_dir(path, identity)
        logger.info("Loaded version %s on request (%s)", version, model.identity.runtime)
        return model


def _not_served(current: ServedModel, version: str) -> InferError:
    return InferError(
        f"model {current.identity.name!r} has no version {version!r} loaded"
        f" (serving {current.identity.version})",
        "not_found",
    )


_cache: VersionCache | None = None


def get_versions() -> VersionCache:
    """This worker's cache (created on first use, once the runtime exists)."""
    global _cache
    if _cache is None:
        from serving.runtime import get_runtime

        runtime = get_runtime()
        _cache = VersionCache(runtime.settings, runtime.holder, runtime.settings.loaded_versions)
    return _cache


async def resolve(name: str, version: str) -> ServedModel:
    """The model a request names, or NOT_FOUND (an unknown model or version)."""
    cache = get_versions()
    served = cache.holder.current.identity.name
    if name != served:
        raise InferError(f"unknown model {name!r}; this server serves {served!r}", "not_found")
    get_repository().check_available(name)
    return await cache.get(version)


async def classify(model: ServedModel, rows, protocol: str) -> tuple[list[str], object, str]:
    """Species, probabilities and prediction id from exactly ``model``: the same path as
    every HTTP prediction (counted, captured, and shadow-scored when it is the champion).

    Returns:
        (species, probabilities, prediction id; rows are ``<id>-<row>``).
    """
    from serving.runtime import get_runtime

    runtime = get_runtime()
    started = time.perf_counter()
    model, names, proba = await runtime.classify_async(rows, model)
    base = runtime.answered(model, rows, proba, protocol, started)
    return names, proba, base
