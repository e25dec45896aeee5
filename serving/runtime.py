"""The per-worker runtime behind ``service.py``: what a worker holds and does per answer.

:class:`IrisRuntime` owns the served models (champion, challenger) and the reloader that
follows the registry, classifies rows, gives every answer its prediction ids, hands it to
capture (whose sink also scores the shadow), and starts retrain jobs. ``service.py``
stays a thin HTTP shell; everything here is importable and testable without a server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import numpy as np
from starlette.responses import Response

from serving import challenger, shadow_scoring
from serving.capture import Chunk, capture_writer, new_id, row_ids
from serving.errors import json_response
from serving.job_store_sql import JobStore
from serving.jobs import Job
from serving.loop_monitor import LoopMonitor
from serving.metrics import forget_dead_workers, get_metrics
from serving.reloader import ChampionWatcher
from serving.retrain_launcher import RetrainLauncher
from serving.schemas import prediction_objects
from serving.served_model import ModelHolder, ModelIdentity, ServedModel, load_model_dir
from training.loop_store import FeedbackStore
from training.schema import CHAMPION
from training.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_runtime: IrisRuntime | None = None


def get_runtime() -> IrisRuntime:
    if _runtime is None:
        raise RuntimeError("the service has not started yet")
    return _runtime


def identity_from_store(bento_model, settings: Settings) -> ModelIdentity:
    labels = bento_model.info.labels
    return ModelIdentity(
        name=labels.get("registry_model", settings.model_name),
        version=str(labels.get("registry_version", "?")),
        alias=CHAMPION,
        run_id=labels.get("run_id", ""),
        source="bento",
    )


class IrisRuntime:
    def __init__(self, settings: Settings, model: ServedModel):
        self.settings = settings
        self.holder = ModelHolder(model)
        self.metrics = get_metrics()
        self.jobs = JobStore(
            settings.jobs_url,
            lease_s=settings.jobs_lease_s,
            statement_s=settings.db_statement_timeout_s,
            sqlite_busy_s=5.0,  # as the loop store: a request waits seconds, not minutes
        )
        self.retrains = RetrainLauncher(settings, self.jobs, self._on_retrain_finished)
        self.feedback_store = FeedbackStore(
            settings.loop_url, statement_s=settings.db_statement_timeout_s
        )
        self.capturer = (
            capture_writer(settings, self.metrics, self._shadow_target)
            if settings.capture
            else None
        )
        if settings.shadow_rate > 0 and not settings.capture:
            logger.warning("IRIS_SHADOW_RATE is set but capture is off: no shadow scoring")
        self.monitor = LoopMonitor(settings, self.feedback_store, self.holder, self.metrics)
        self.watcher = ChampionWatcher(
            settings,
            self.holder,
            on_swap=self._on_swap,
            on_failure=lambda alias: self.metrics.model_reload_failures.labels(alias=alias).inc(),
            on_poll=forget_dead_workers,
            on_challenger=self.metrics.challenger_loads.inc,
        )
        self.metrics.start(model.identity.name, model.identity.version)

    @classmethod
    def start(cls, bento_model, settings: Settings | None = None) -> IrisRuntime:
        """Load the packed model, start following the registry, and register globally."""
        global _runtime
        settings = settings or get_settings()
        identity = identity_from_store(bento_model, settings)
        model = load_model_dir(Path(bento_model.path_of("mlflow_model")), identity)
        logger.info(
            "Worker %d serving %s v%s (%s) from %s",
            os.getpid(),
            identity.name,
            identity.version,
            model.identity.runtime,
            bento_model.tag,
        )
        runtime = cls(settings, model)
        if runtime.capturer is not None:
            runtime.capturer.start()
        runtime.monitor.start()
        if settings.follow_registry:
            runtime.watcher.start()
        _runtime = runtime
        return runtime

    def stop(self) -> None:
        self.watcher.stop()
        self.monitor.stop()
        if self.capturer is not None:
            self.capturer.close()  # a clean stop loses no captured prediction

    # -- predictions ---------------------------------------------------------------

    async def classify_async(
        self, rows: np.ndarray, model: ServedModel | None = None
    ) -> tuple[ServedModel, list[str], np.ndarray]:
        """Classify an (n, 4) array with ``model``, by default the champion current at call
        time.

        Returns that model too, so callers report exactly the version that answered.
        """
        model = model or self.holder.current
        if model.fast:  # ONNX: microseconds, cheaper than a thread hop
            names, proba = model.predict(rows)
        else:
            names, proba = await asyncio.to_thread(model.predict, rows)
        self.metrics.record(names, model.identity.version)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "v%s predicted %s for %d row(s)", model.identity.version, names[:5], len(names)
            )
        return model, names, proba

    async def predict_rows(
        self, rows: np.ndarray, *, single: bool, client_key: str | None = None
    ) -> Response:
        """Our own JSON answer for one flower (``single``) or a batch, captured.

        Every answer has a prediction id (a batch's rows: ``<id>-<row>``), in the body and
        in the ``X-Prediction-Id`` header. A single flower may be answered by the
        challenger (canary); champion answers may be scored in shadow.
        """
        started = time.perf_counter()
        champion = self.holder.current
        chosen = challenger.choose(self.holder, client_key) if single else champion
        model, names, proba = await self.classify_async(rows, chosen)
        classes = model.class_names
        info = model.identity.public()
        base = self.answered(model, rows, proba, "http", started, single=single)
        if single:
            payload = {
                "prediction_id": base,
                "species": names[0],
                "probabilities": dict(zip(classes, proba[0].tolist(), strict=True)),
                "model": info,
            }
        else:
            ids = row_ids(base, len(names))
            payload = {"model": info, "predictions": prediction_objects(classes, ids, names, proba)}
        return json_response(payload, headers={"X-Prediction-Id": base})

    def answered(
        self,
        model: ServedModel,
        rows: np.ndarray,
        proba: np.ndarray,
        protocol: str,
        started: float,
        *,
        single: bool = False,
    ) -> str:
        """What every protocol does with an answer: give it an id and capture it (the
        capture sink scores champion answers in shadow). O(1) in the number of rows: the
        rows' own ids (``<id>-<row>``) are made only by whoever shows them.

        Returns:
            The answer's prediction id (a ``single`` flower's own id; row ``i`` of a batch
            is ``<id>-<i>``).
        """
        base = new_id()
        self.capture(model, base, single, rows, proba, protocol, started, model.identity.alias)
        return base

    def capture(
        self,
        model: ServedModel,
        base: str,
        single: bool,
        rows: np.ndarray,
        proba: np.ndarray,
        protocol: str,
        started: float,
        role: str = CHAMPION,
    ) -> None:
        """Hand one answer to the capture writer (a no-op with ``IRIS_CAPTURE=false``)."""
        if self.capturer is None:
            return
        identity = model.identity
        self.capturer.submit(
            Chunk(
                time.time(),
                base,
                single,
                rows,
                proba,
                model.class_names,
                identity.name,
                identity.version,
                role,
                protocol,
                (time.perf_counter() - started) * 1000.0,
            )
        )

    def _shadow_target(self) -> dict | None:
        """What this worker's capture sink scores in shadow, asked at each flush."""
        return shadow_scoring.target(self.holder.challenger, self.settings.shadow_rate)

    def _on_swap(self, previous: ServedModel, model: ServedModel) -> None:
        self.metrics.model_reloads.inc()
        self.metrics.serving(model.identity.name, model.identity.version)

    def _on_retrain_finished(self, job: Job) -> None:
        promoted = bool(job.result and job.result.get("promoted"))
        self.metrics.retrain_jobs.labels(outcome=job.state, promoted=str(promoted).lower()).inc()
        if promoted:
            self.watcher.poke()
