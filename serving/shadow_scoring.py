"""Shadow scoring in the capture sink: the challenger scores spooled champion answers.

A worker answers with the champion and spools the answer (``serving.capture``); it does
nothing else for the shadow. At each flush it names, in the spool file's metadata, the
challenger it holds and the share to score (:func:`target`, ``IRIS_SHADOW_RATE``). The
worker's capture sink (niced, out of the worker) draws that share of the file's champion
answers, scores their flowers with the challenger (:class:`ShadowScorer`), writes the
challenger's answers to Parquet as role ``shadow`` beside the champion's (same prediction
ids, same time), and reports per (champion, challenger) how many flowers it scored and
how many named the champion's species; the worker turns the reports into
``iris_shadow_scored_total`` / ``iris_shadow_agreed_total`` (:func:`count`).

Why here: in the worker, the shadow's model calls and hand-offs took its GIL and its CPU
from answering (``benchmarks/README.md``, "Capture and shadow cost"); the sink runs at a
lower priority, so under full load the kernel gives the CPU to answers first.

What that means:

- Shadow scoring needs capture (``IRIS_CAPTURE=true``, the default): it scores what was
  captured.
- A challenger that fails to load or to score is counted (``iris_shadow_failed_total``);
  one that failed to load is loaded again after ``RETRY_S``, one that failed to score
  tries the next file. The champion's rows are written all the same; the shadow's go to
  files of their own (``part-<stem>-s-<k>.parquet``).
- A challenger without a usable ONNX export is scored with scikit-learn, as the worker
  would serve it; that sink then also holds scikit-learn and pandas (about 100 MiB more).
- A sink that is behind (more than ``BEHIND_ROWS_SHARE`` of ``IRIS_CAPTURE_MAX_PENDING``
  still spooled) skips the shadow for the file, counted in ``iris_shadow_skipped_total``:
  capturing the champion's answers comes first.
- A file is scored last, from memory, once it is deleted (or waits only for the index):
  a challenger that raises never holds the capture back. One that kills or hangs its
  sink is caught by a marker file (:func:`marker_path`): the sink writes it, naming the
  challenger and the time, before it loads or calls it, and deletes it after. A worker
  kills its sink when its marker is ``STALL_S`` old (hung) and restarts a dead one; the
  next sink turns the marker it finds into that worker's ban (``.banned``) and does not
  use that challenger version (counted as failed); another version is used. Meanwhile
  capture waits (about ``STALL_S`` for a hang, up to ``RESTART_S`` for a crash, plus a
  flush and the new sink's start) and the worker's queue bound may drop answers,
  counted. A ban is per worker, holds the last version that did it, and ends with the
  worker. A file processed
  again (its sink killed before deleting it) is scored then, once. The draw is a hash of
  the prediction id, so every worker and retry draws the same answers.
- Scores reach the files and the counters about one flush interval after the answer. The
  counters count what reached the files: a shadow file that could not be written is
  counted as dropped (``iris_capture_dropped_total``), not as scored.

Over 250 lines (about 380): what a worker asks, the draw, the scorer with its challenger's
life (load, retry, ban) and the shadow's rows belong together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from serving.arrow_buffers import list_array, numeric_array
from serving.capture_columns import METAS_KEY, Meta
from serving.capture_table import SpoolRows, capture_table, spool_rows
from training.logs import DistinctErrors
from training.schema import CHALLENGER, CHAMPION, SHADOW

logger = logging.getLogger(__name__)

TARGET_KEY = b"iris.shadow"
"""Spool table metadata: the JSON :func:`target` of the flush (absent: no shadow)."""
RETRY_S = 60.0
"""A challenger that failed to load is tried again after this long."""
BEHIND_ROWS_SHARE = 0.25

Report = Callable[[str, str], None]


def target(challenger, rate: float) -> dict | None:
    """What a worker's flush asks its sink to do: score ``rate`` of its champion answers
    with ``challenger`` (a ``ServedModel``), loaded from the same folder. None: nothing."""
    if challenger is None or rate <= 0 or challenger.model_dir is None:
        return None
    identity = challenger.identity
    return {
        "name": identity.name,
        "version": identity.version,
        "run_id": identity.run_id,
        "dir": str(challenger.model_dir),
        "rate": rate,
    }


def count(metrics, kind: str, fields: list[str]) -> None:
    """A sink's shadow report as the worker's counters: ``shadow <champion> <challenger>
    <scored> <agreed>``, ``shadow_failed <champion> <challenger> <n>``, ``shadow_skipped <n>``."""
    if kind == "shadow":
        champion, challenger, scored, agreed = fields
        pair = {"champion": champion, "challenger": challenger}
        metrics.shadow_scored.labels(**pair).inc(int(scored))
        metrics.shadow_agreed.labels(**pair).inc(int(agreed))
    elif kind == "shadow_failed":
        champion, challenger, n = fields
        metrics.shadow_failed.labels(champion=champion, challenger=challenger).inc(int(n))
    elif kind == "shadow_skipped":
        (n,) = fields
        metrics.shadow_skipped.inc(int(n))


def drawn(ids: list[str], rate: float) -> np.ndarray:
    """Which answers (by prediction id) the shadow scores: ``rate`` of them, the same ones
    every time (a hash of the id)."""
    if rate >= 1:
        return np.ones(len(ids), dtype=bool)
    hashes = np.fromiter((zlib.crc32(i.encode()) for i in ids), np.uint64, len(ids))
    return hashes < rate * 2**32  # crc32 is 32 bits


class ShadowScorer:
    """One per capture sink: the challenger its worker names, loaded once per version."""

    def __init__(
        self,
        report: Report,
        load: Callable | None = None,
        clock: Callable[[], float] = time.monotonic,
        marker: Path | None = None,
    ):
        self.report = report
        self.load = load or _load_one_thread  # (folder, identity) -> ServedModel
        self.clock = clock
        self.marker = marker  # names the challenger while it is loaded or called
        # A challenger this worker's last sinks died or hung in (read once, at start).
        self._key: tuple[str, str] | None = None
        self._model = None
        self._retry_at = 0.0
        self._errors = DistinctErrors(logger, "Shadow scoring works again")
        self._banned = _ban_left(marker)

    def write(self, files, spooled, found: SpoolRows, stem: str, *, behind: bool) -> int:
        """Score a processed spool file's drawn answers into ``files`` (``CaptureFiles``) as
        ``part-<stem>-s-<k>.parquet``; returns the rows written. Never raises."""
        try:
            shadow, agreement = self.rows(spooled, found, behind=behind)
        except Exception as e:  # noqa: BLE001 - never stops the capture
            self._errors.failed(logging.ERROR, "Shadow scoring failed", e)
            return 0
        if shadow is None:
            return 0
        # Counted as scored, not as captured answers (iris_captured_total counts served
        # answers' rows); rows not written are counted as dropped by ``files``.
        written = files.write(shadow, f"{stem}-s")
        if written == shadow.num_rows:
            for fields in agreement:
                self.report("shadow", fields)
        return written

    def rows(self, spooled, found: SpoolRows, *, behind: bool = False) -> tuple[object, list[str]]:
        """The Parquet rows (``serving.capture_table``) of the challenger's answers to the
        drawn champion answers of ``spooled`` (whose flowers are ``found``), and the
        agreement to report once they are written (``shadow`` report fields); None (and
        nothing to report) if there are none, or the challenger failed (counted)."""
        raw = (spooled.schema.metadata or {}).get(TARGET_KEY)
        if raw is None:  # no challenger (any more): let its model go
            self._key = self._model = None
            return None, []
        wanted = json.loads(raw)
        rate = float(wanted["rate"])
        served = np.array([m.role == CHAMPION for m in found.metas] or [False])
        picked = np.flatnonzero(served[found.meta])
        if len(picked) and rate < 1:  # every answer at 1: no ids to hash
            ids = spooled["answer_id"].take(numeric_array(picked)).to_pylist()
            picked = picked[drawn(ids, rate)]
        if not len(picked):
            return None, []
        flowers = np.isin(found.answer, picked)
        if behind:
            self.report("shadow_skipped", str(int(flowers.sum())))
            return None, []
        model = self._challenger(wanted)
        if model is None:
            self._failed(found, flowers, wanted["version"])
            return None, []
        try:
            started = time.perf_counter()
            with self._calling(wanted):
                _, proba = model.predict(found.inputs[flowers])
            latency_ms = (time.perf_counter() - started) * 1000.0
            shadow = _shadow_spool(spooled, found, picked, flowers, model, proba, latency_ms)
            table = capture_table(shadow, spool_rows(shadow))
        except Exception as e:  # noqa: BLE001 - a broken challenger is counted, never raised
            self._errors.failed(logging.WARNING, f"Shadow v{wanted['version']} failed", e)
            self._failed(found, flowers, wanted["version"])
            return None, []
        self._errors.ok()
        return table, _agreement(found, flowers, model, proba)

    def _challenger(self, wanted: dict):
        """The challenger ``wanted`` names, loaded once; None if it cannot be (tried again
        after ``RETRY_S``)."""
        from serving.served_model import ModelIdentity

        key = (wanted["dir"], wanted["version"])
        if key == self._key and (self._model is not None or self.clock() < self._retry_at):
            return self._model
        self._key, self._model = key, None
        if key == self._banned:
            self._retry_at = float("inf")
            logger.error(
                "Shadow challenger v%s was being loaded or called when a capture sink of "
                "this worker died or hung; this worker's sinks do not use it (another "
                "version they do; its answers count as failed shadow scores)",
                key[1],
            )
            return None
        identity = ModelIdentity(wanted["name"], key[1], CHALLENGER, wanted["run_id"], "registry")
        if self.load is _load_one_thread:
            # Imports take seconds, so they happen before the marked time: ONNX Runtime
            # and the loader (a challenger without an export still imports skops within).
            import onnxruntime  # noqa: F401

            import serving.served_model  # noqa: F401
        try:
            with self._calling(wanted):
                self._model = self.load(Path(wanted["dir"]), identity)
        except Exception as e:  # noqa: BLE001 - counted as failed scores, tried again later
            self._retry_at = self.clock() + RETRY_S
            self._errors.failed(logging.ERROR, f"Shadow challenger v{key[1]} not loaded", e)
            return None
        runtime = self._model.identity.runtime
        logger.info("Shadow scoring with challenger v%s (%s)", key[1], runtime)
        return self._model

    @contextlib.contextmanager
    def _calling(self, wanted: dict) -> Iterator[None]:
        """Name the challenger in the marker file while it runs: if the sink dies or hangs
        meanwhile, its next sink knows which challenger did it."""
        if self.marker is None:
            yield
            return
        self.marker.write_text(json.dumps([wanted["dir"], wanted["version"], time.monotonic()]))
        try:
            yield
        finally:
            self.marker.unlink(missing_ok=True)

    def keep_ban(self) -> None:
        """Refresh the ban's file time (housekeeping, once a minute): the sweep of gone
        workers' files (after an hour) must not take it while this worker lives."""
        if self._banned is not None and self.marker is not None:
            with contextlib.suppress(OSError):
                os.utime(ban_path(self.marker))

    def _failed(self, found: SpoolRows, flowers: np.ndarray, challenger: str) -> None:
        """Report the flowers not scored, per champion version."""
        for version, (n, _) in _per_champion(found, flowers).items():
            self.report("shadow_failed", f"{version} {challenger} {n}")


def _agreement(found: SpoolRows, flowers: np.ndarray, model, proba) -> list[str]:
    """Per champion version, flowers scored and flowers whose species both models named
    (each the argmax of its own probabilities, as served), as ``shadow`` report fields."""
    theirs = np.asarray(model.class_names, dtype=object)[proba.argmax(axis=1)]
    return [
        f"{version} {model.identity.version} {scored} {agreed}"
        for version, (scored, agreed) in _per_champion(found, flowers, theirs).items()
    ]


def _per_champion(found: SpoolRows, flowers: np.ndarray, theirs=None) -> dict[str, list[int]]:
    """``{champion version: [flowers, flowers whose species is theirs too]}`` of the
    ``flowers`` mask; ``theirs``: the challenger's species name per selected flower."""
    meta, predicted = found.meta[found.answer[flowers]], found.predicted[flowers]
    counts: dict[str, list[int]] = {}
    for code in np.unique(meta).tolist():
        rows = meta == code
        tally = counts.setdefault(found.metas[code].model_version, [0, 0])
        tally[0] += int(rows.sum())
        if theirs is not None:  # names, each champion answer in its own class order
            ours = np.asarray(found.metas[code].classes, dtype=object)[predicted[rows]]
            tally[1] += int((ours == theirs[rows]).sum())
    return counts


def marker_path(spool: Path, owner: int) -> Path:
    """``.shadow-<worker pid>.busy``: names the challenger a worker's sink is loading or
    calling, and since when (``[folder, version, time.monotonic()]``; the clock is the
    machine's, so the worker can read it)."""
    return spool / f".shadow-{owner}.busy"


def ban_path(marker: Path) -> Path:
    """``.shadow-<worker pid>.banned``: the challenger a sink of that worker died or hung in."""
    return marker.with_suffix(".banned")


def marker_files(spool: Path) -> list[tuple[int, Path]]:
    """Every worker's marker and ban in ``spool``, with the worker's pid."""
    found = []
    for path in [*spool.glob(".shadow-*.busy"), *spool.glob(".shadow-*.banned")]:
        owner = path.name.removeprefix(".shadow-").partition(".")[0]
        if owner.isdigit():
            found.append((int(owner), path))
    return found


def busy_since(marker: Path) -> float | None:
    """When the marker's call began (``time.monotonic``); None without a readable one."""
    try:
        return float(json.loads(marker.read_text())[2])
    except (OSError, ValueError, TypeError, LookupError):
        return None


def forget(marker: Path) -> None:
    """Remove a worker's marker and ban: a new worker (perhaps a reused pid) starts clean."""
    for path in (marker, ban_path(marker)):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _ban_left(marker: Path | None) -> tuple[str, str] | None:
    """The challenger (folder, version) a sink of this worker died or hung in: a marker
    the last sink left becomes the worker's ban (``.banned``), which later sinks read."""
    if marker is None:
        return None
    banned = ban_path(marker)
    with contextlib.suppress(OSError):  # FileNotFoundError: that sink finished its calls
        os.replace(marker, banned)
    try:
        folder, version, *_ = json.loads(banned.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:  # torn by the death itself: no verdict
        logger.warning("Shadow ban %s unreadable (%s); ignored", banned, e)
        with contextlib.suppress(OSError):
            banned.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):  # still wanted: the sweep of gone workers' files leaves it
        os.utime(banned)
    return str(folder), str(version)


def _load_one_thread(folder: Path, identity):
    """The challenger as served, ONNX Runtime on one thread (the sink is background work)."""
    from serving.served_model import load_model_dir

    return load_model_dir(folder, identity, threads=1)


def _shadow_spool(spooled, found: SpoolRows, picked, flowers, model, proba, latency_ms: float):
    """A spool table (``serving.capture_columns``) of the challenger's answers to the
    answers ``picked`` (whose flowers are ``flowers``): their ids, times and flowers, its
    probabilities, role shadow."""
    import pyarrow as pa

    identity = model.identity
    metas: dict[Meta, int] = {}
    recode = np.zeros(max(len(found.metas), 1), dtype=np.int32)  # champion meta -> shadow's
    for code, served in enumerate(found.metas):
        meta = Meta(identity.name, identity.version, SHADOW, served.protocol, model.class_names)
        recode[code] = metas.setdefault(meta, len(metas))
    codes = recode[found.meta[picked]]
    offsets = np.zeros(len(picked) + 1, dtype=np.int32)
    np.cumsum(np.diff(found.starts)[picked], out=offsets[1:])
    taken = numeric_array(picked)
    features = found.inputs.shape[1]
    columns = {
        "time": spooled["time"].take(taken),
        "answer_id": spooled["answer_id"].take(taken),
        "single": spooled["single"].take(taken),
        "meta": numeric_array(codes),
        "latency_ms": numeric_array(np.full(len(picked), latency_ms, dtype=np.float32)),
        "inputs": list_array(offsets * features, found.inputs[flowers].reshape(-1)),
        "probabilities": list_array(offsets * proba.shape[1], proba.reshape(-1)),
    }
    described = json.dumps([[*m[:-1], list(m[-1])] for m in metas])
    return pa.Table.from_arrays(
        list(columns.values()), names=list(columns), metadata={METAS_KEY: described}
    )
