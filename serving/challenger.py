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
  touch an answer: it runs after the response, batched on one background thread, and
  is skipped (counted) when that thread has a backlog.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib

import numpy as np

from serving.served_model import ModelHolder, ServedModel
from training.logs import DistinctErrors
from training.onnx_model import BULK_ROWS
from training.schema import SHADOW

logger = logging.getLogger(__name__)

BUCKETS = 10_000
BATCH_S = 1.0
"""How long a drawn request waits to be scored together with the others. Every wake-up
takes the worker's GIL for a fixed cost (the model call, the captures): at 0.02 s (50 a
second), workers answering /predict at full load with capture and shadow on spent 10-25 %
more CPU per request than with both off; at 0.2 s, 5-7 % (``python -m
benchmarks.loop_cpu``; benchmarks/README.md, "Capture and shadow cost"). Since then one
wake-up a second, as often as the capture writer flushes by default: a shadow score
reaches the files a second or two after its answer, and nobody waits for it."""
MAX_PENDING_ROWS = 65_536
"""Rows waiting for the challenger before new requests are skipped (counted)."""


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
    """Scores a share of champion-answered requests with the challenger, off the response.

    A drawn request costs its handler one list append. A background thread wakes every
    ``BATCH_S`` and scores everything drawn since in one call of the challenger: a model
    call costs about the same for 1 row as for 100, so at 1,000 requests/s this is one
    call a second instead of 1,000, none of them on the event loop (ONNX Runtime releases
    the GIL while it computes).
    """

    def __init__(self, rate: float, metrics, capture):
        self.rate = rate
        self.metrics = metrics
        self.capture = capture  # IrisRuntime.capture_scored
        self._pending: list[tuple] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = DistinctErrors(logger, "Shadow scoring works again")
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
        """Queue a shadow score for this answer (id ``base``, the champion's probabilities
        ``proba``), if it is drawn. Never blocks or raises."""
        if challenger is None or self.rate <= 0 or random.random() >= self.rate:
            return
        with self._lock:
            if self._stop.is_set() or self._pending_rows + len(rows) > MAX_PENDING_ROWS:
                accepted = False
            else:
                self._pending.append((challenger, champion, base, single, rows, proba, protocol))
                self._pending_rows += len(rows)
                accepted = True
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
                    self._thread.start()
        if not accepted:  # the challenger is behind (or we are stopping): skip, counted
            self.metrics.shadow_skipped.inc()

    def _loop(self) -> None:
        while not self._stop.wait(BATCH_S):
            self.drain()
        self.drain()

    def drain(self) -> int:
        """Score everything queued now, one challenger call per (champion, challenger);
        returns the rows scored."""
        with self._lock:
            items, self._pending, self._pending_rows = self._pending, [], 0
        groups: dict[tuple[int, int], list[tuple]] = {}
        for item in items:
            groups.setdefault((id(item[0]), id(item[1])), []).append(item)
        for group in groups.values():
            try:
                self._score(group)
            except Exception:  # never let the thread die: the next batch tries again
                logger.exception("Shadow scoring failed")
        return sum(len(item[4]) for item in items)

    def _score(self, group: list[tuple]) -> None:
        challenger, champion = group[0][0], group[0][1]
        started = time.perf_counter()
        pair = {
            "champion": champion.identity.version,
            "challenger": challenger.identity.version,
        }
        rows = np.concatenate([item[4] for item in group])
        if not len(rows):  # nothing to score (every answer has rows: never, in practice)
            return
        # ONNX: in calls under BULK_ROWS, which ONNX Runtime runs on this thread alone (a
        # shadow score is background work and must not take every core from answers).
        step = BULK_ROWS - 1 if challenger.identity.runtime == "onnx" else max(len(rows), 1)
        try:
            shadow_proba = np.concatenate(
                [challenger.predict(rows[at : at + step])[1] for at in range(0, len(rows), step)]
            )
        except Exception as e:  # noqa: BLE001 - a broken challenger is counted, not raised
            self.metrics.shadow_failed.labels(**pair).inc(len(group))
            self._errors.failed(logging.WARNING, f"Shadow v{challenger.identity.version} failed", e)
            return
        proba = np.concatenate([item[5] for item in group])
        scored, agreed = self._counters(pair)
        scored.inc(len(rows))
        agreed.inc(agreement(champion, proba, challenger, shadow_proba))
        # One hand-off per protocol (nearly always one), not one per answer: each costs
        # this thread the GIL while the event loop waits for it.
        ends = np.cumsum([len(item[4]) for item in group])
        protocols = [item[6] for item in group]
        for protocol in dict.fromkeys(protocols):
            picked = [k for k, p in enumerate(protocols) if p == protocol]
            if len(picked) == len(group):
                these, these_rows, these_proba = ends, rows, shadow_proba
            else:
                take = np.concatenate(
                    [np.arange(ends[k] - len(group[k][4]), ends[k]) for k in picked]
                )
                these = np.cumsum([len(group[k][4]) for k in picked])
                these_rows, these_proba = rows[take], shadow_proba[take]
            self.capture(
                challenger,
                [group[k][2] for k in picked],
                [group[k][3] for k in picked],
                these,
                these_rows,
                these_proba,
                protocol,
                started,
                SHADOW,
            )

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

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking requests and score what is queued."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        else:
            self.drain()


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
