"""The challenger on live traffic: canary answers and shadow scoring.

With a ``@challenger`` in the registry, every worker holds it beside the champion
(serving.reloader). Two ways to try it, both set without a restart:

- **Canary**: the registered model's ``canary_percent`` tag (``iris-train canary 10``, stored
  as ``10@v<challenger version>``) sends that share of ``/predict`` to that challenger (a
  different ``@challenger`` gets nothing until a new split names it), which answers (the
  response's ``model.alias`` says ``challenger``). The choice is sticky per client:
  requests with the same ``X-Client-Key`` header (``IRIS_CANARY_KEY_HEADER``) always land
  on the same side, by a hash of the key; requests without one are split at random.
- **Shadow** (``IRIS_SHADOW_RATE``, a share of requests): the challenger also scores
  requests the champion answered, after the answer has gone: its outputs are captured
  (role ``shadow``) and compared with the champion's (``iris_shadow_agreed_total`` over
  ``iris_shadow_scored_total``), never returned. A challenger that fails or is slow cannot
  touch an answer: it runs after the response, on one background thread unless it is an
  ONNX model scoring a few rows (microseconds), and is skipped (counted) when that thread
  has a backlog.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.served_model import ModelHolder, ServedModel

logger = logging.getLogger(__name__)

BUCKETS = 10_000
MAX_BACKLOG = 64
"""Shadow calls waiting for the background thread before new ones are skipped."""
ON_LOOP_ROWS = 16
"""Largest answer an ONNX challenger scores on the event loop (microseconds). Bigger ones
(a 1,000-row call takes about a millisecond) go to the background thread, where ONNX
Runtime runs without the GIL instead of delaying every request queued on the loop."""


def in_canary(percent: float, client_key: str | None) -> bool:
    """Whether a request goes to the challenger: sticky by ``client_key``, else random."""
    if percent <= 0:
        return False
    hashed = zlib.crc32(client_key.encode()) if client_key else random.randrange(BUCKETS)
    bucket = hashed % BUCKETS
    return bucket < percent * BUCKETS / 100


def choose(holder: ModelHolder, client_key: str | None) -> ServedModel:
    """The model that answers this ``/predict``: the challenger for the canary share."""
    challenger = holder.challenger
    if (
        challenger is not None
        and challenger.identity.version == holder.canary_version
        and in_canary(holder.canary_percent, client_key)
    ):
        return challenger
    return holder.current


class Shadow:
    """Scores a share of champion-answered requests with the challenger, off the response."""

    def __init__(self, rate: float, metrics, capture):
        self.rate = rate
        self.metrics = metrics
        self.capture = capture  # IrisRuntime.capture
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._backlog = 0
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._pairs: dict[tuple[str, str], tuple] = {}

    def maybe(
        self,
        challenger: ServedModel | None,
        champion: ServedModel,
        base: str,
        single: bool,
        rows: np.ndarray,
        proba: np.ndarray,
        protocol: str,
    ) -> None:
        """Schedule a shadow score for this answer (id ``base``, the champion's
        probabilities ``proba``), if it is drawn. Never raises."""
        if challenger is None or self.rate <= 0 or random.random() >= self.rate:
            return
        args = (challenger, champion, base, single, rows, proba, protocol)
        if challenger.fast and len(rows) <= ON_LOOP_ROWS:
            # After the current request's response: the callback runs once the handler
            # has returned and the event loop moves on (microseconds for a few rows).
            asyncio.get_running_loop().call_soon(self._score, *args)
            return
        with self._lock:
            if self._backlog >= MAX_BACKLOG:
                self.metrics.shadow_skipped.inc()
                return
            self._backlog += 1
        try:
            self._executor.submit(self._in_thread, *args)
        except RuntimeError:  # shutting down: the answer is not affected, the score skipped
            with self._lock:
                self._backlog -= 1
            self.metrics.shadow_skipped.inc()

    def _in_thread(self, *args) -> None:
        try:
            self._score(*args)
        finally:
            with self._lock:
                self._backlog -= 1

    def _score(self, challenger, champion, base, single, rows, proba, protocol) -> None:
        started = time.perf_counter()
        pair = {
            "champion": champion.identity.version,
            "challenger": challenger.identity.version,
        }
        try:
            _, shadow_proba = challenger.predict(rows)
        except Exception as e:  # noqa: BLE001 - a broken challenger is counted, not raised
            self.metrics.shadow_failed.labels(**pair).inc()
            message = f"{type(e).__name__}: {e}"
            if message != self._last_error:
                logger.warning("Shadow v%s failed: %s", challenger.identity.version, message)
                self._last_error = message
            return
        scored, agreed = self._counters(pair)
        scored.inc(len(rows))
        agreed.inc(agreement(champion, proba, challenger, shadow_proba))
        self.capture(challenger, base, single, rows, shadow_proba, protocol, started, "shadow")

    def _counters(self, pair: dict[str, str]):
        """The (scored, agreed) counters of a (champion, challenger) pair, looked up once:
        ``labels()`` costs more than the ONNX call of one row."""
        key = (pair["champion"], pair["challenger"])
        found = self._pairs.get(key)
        if found is None:
            found = self._pairs[key] = (
                self.metrics.shadow_scored.labels(**pair),
                self.metrics.shadow_agreed.labels(**pair),
            )
        return found

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def agreement(
    champion: ServedModel, proba: np.ndarray, challenger: ServedModel, shadow: np.ndarray
) -> int:
    """How many rows both models gave the same species (each the argmax of its own
    probabilities, as served), without making a name per row."""
    ours, theirs = proba.argmax(axis=1), shadow.argmax(axis=1)
    if champion.class_names != challenger.class_names:  # another class order: compare names
        names = np.asarray(champion.class_names, dtype=object)
        other = np.asarray(challenger.class_names, dtype=object)
        return int((names[ours] == other[theirs]).sum())
    return int((ours == theirs).sum())
