"""Follow the registry's ``champion`` alias and hot-swap the served model.

Each worker runs one daemon thread. Every ``IRIS_RELOAD_INTERVAL_S`` it asks the registry
which version is champion (``serving.champion_lookup``: no MLflow in the worker); when that
differs from what it serves, it loads the version from this server's BentoML store (a local
retrain imported it) or from the folder one fetch subprocess per server put on disk
(``serving.model_cache``), replays its ONNX parity check, and only then swaps it in. Any
failure (registry down, tampered file, parity) is logged and the current model keeps serving.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from serving import champion_lookup, model_cache
from serving.model_cache import RETRY_FAILED_S, RETRY_REFUSED_S, FetchError
from serving.served_model import ModelHolder, ModelIdentity, ServedModel, load_model_dir
from training.logs import DistinctErrors, one_line
from training.schema import CANARY_TAG, CHALLENGER, CHAMPION, parse_canary, store_tag
from training.settings import Settings

logger = logging.getLogger(__name__)


class ChampionWatcher:
    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        on_swap: Callable[[ServedModel, ServedModel], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        on_poll: Callable[[], object] | None = None,
        on_challenger: Callable[[], None] | None = None,
    ):
        """Args:
        on_swap: called with (previous, new) after a new champion is swapped in.
        on_failure: called with the alias when a new version could not be loaded.
        on_poll: called at every poll, before the registry check (housekeeping).
        on_challenger: called when a new challenger has been loaded.
        """
        self.settings = settings
        self.holder = holder
        self.on_swap = on_swap
        self.on_failure = on_failure
        self.on_poll = on_poll
        self.on_challenger = on_challenger
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._outage = DistinctErrors(logger, "Registry reachable again")
        # Per alias: the last version that failed to load, and when to try it again.
        self._refused: dict[str, tuple[str, str]] = {}
        self._retry_at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="champion-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        model_cache.stop_fetches()

    def poke(self) -> None:
        """Check now instead of at the next interval (after a local retrain)."""
        self._wake.set()

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            swapped = self.check_once()
            if first or swapped:
                # What the first check imported and what a swap loaded live as long as
                # the worker. Freeze them out of future garbage collections, whose full
                # passes otherwise make the p99 tail.
                gc.collect()
                gc.freeze()
                first = False
            self._wake.wait(self.settings.reload_interval_s)
            self._wake.clear()

    def check_once(self) -> bool:
        """One poll; True if a new model was swapped in. Never raises."""
        with self._lock:
            try:
                if self.on_poll:
                    self.on_poll()
                return self._check()
            except Exception as e:  # noqa: BLE001 - logged once per outage, not every poll
                version = self.holder.current.identity.version
                self._outage.failed(
                    logging.WARNING, f"Registry check failed; still serving v{version}", e
                )
                return False

    def _check(self) -> bool:
        name = self.settings.model_name
        found = champion_lookup.champion(self.settings.tracking_uri, name)
        self._outage.ok()
        swapped = self._follow_champion(found)
        self._follow_challenger()
        return swapped

    def _follow_champion(self, found: champion_lookup.Champion | None) -> bool:
        current = self.holder.current.identity
        key = None if found is None else (found.version, found.run_id)
        if key is None or key == (current.version, current.run_id):
            return False
        logger.info(
            "Champion moved to v%s (serving v%s); loading it", found.version, current.version
        )
        held = self.holder.challenger
        if held is not None and (held.identity.version, held.identity.run_id) == key:
            # The challenger was promoted: it is loaded and checked already.
            model = replace(held, identity=replace(held.identity, alias=CHAMPION))
            self.holder.set_challenger(None)
        else:
            model = self._load(found, CHAMPION)
        if model is None:
            return False
        previous = self.holder.swap(model)
        if self.on_swap:
            try:
                self.on_swap(previous, model)
            except Exception:  # metrics only: the swap itself has happened
                logger.exception("After swapping in v%s, the swap hook failed", found.version)
        return True

    def _follow_challenger(self) -> None:
        """Load ``@challenger`` beside the champion (or drop it), and read the canary split.

        A challenger that cannot be loaded is simply not used: answers come from the
        champion, which is what a missing challenger means.
        """
        uri, name = self.settings.tracking_uri, self.settings.model_name
        percent, version = parse_canary(champion_lookup.model_tag(uri, name, CANARY_TAG))
        if (percent, version) != (self.holder.canary_percent, self.holder.canary_version):
            logger.info("Canary split: %g%% of /predict to challenger v%s", percent, version)
            self.holder.canary_percent, self.holder.canary_version = percent, version
        found = champion_lookup.champion(uri, name, CHALLENGER)
        held = self.holder.challenger
        champion = self.holder.current.identity
        if found is None or found.version == champion.version:
            if held is not None:
                self.holder.set_challenger(None)
            return
        if held is not None and (held.identity.version, held.identity.run_id) == (
            found.version,
            found.run_id,
        ):
            model_cache.mark_held(self.settings, held.model_dir)
            return
        model = self._load(found, CHALLENGER)
        if model is not None:
            self.holder.set_challenger(model)
            if self.on_challenger:
                self.on_challenger()

    def _load(self, found: champion_lookup.Champion, alias: str) -> ServedModel | None:
        """Load a registry version (local store, else a fetch subprocess); None on failure,
        logged, with a back-off before the same version is tried again."""
        key = (found.version, found.run_id)
        if self._refused.get(alias) == key and time.monotonic() < self._retry_at.get(alias, 0):
            return None
        name = self.settings.model_name
        identity = ModelIdentity(name, found.version, alias, found.run_id, "registry")
        try:
            model = self._from_local_store(found, identity)
            if model is None:
                path = model_cache.fetched(self.settings, found.version, found.run_id)
                model = load_model_dir(path, identity)
        except Exception as e:  # noqa: BLE001 - any load failure: keep what we serve
            permanent = not isinstance(e, FetchError) or e.permanent
            wait = RETRY_REFUSED_S if permanent else RETRY_FAILED_S
            self._refused[alias], self._retry_at[alias] = key, time.monotonic() + wait
            if self.on_failure:
                self.on_failure(alias)
            logger.error(
                "Could not load %s v%s; still serving v%s (next try in %.0f s): %s",
                alias,
                found.version,
                self.holder.current.identity.version,
                wait,
                one_line(e),
            )
            return None
        self._refused.pop(alias, None)
        return model

    def _from_local_store(
        self, found: champion_lookup.Champion, identity: ModelIdentity
    ) -> ServedModel | None:
        """The version from this server's BentoML store, if a retrain here imported it.

        The import checked it (trusted types, export against the model), so no fetch
        subprocess is needed: a local retrain is served seconds sooner.
        """
        import bentoml

        tag = f"{self.settings.bento_model_name}:{store_tag(found.version, found.run_id)}"
        try:
            stored = bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            return None
        logger.info(
            "v%s is in the local BentoML store (%s); loading it from there", found.version, tag
        )
        return load_model_dir(Path(stored.path_of("mlflow_model")), identity)
