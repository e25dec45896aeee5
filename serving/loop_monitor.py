"""Live quality and drift of the served model, recomputed in the background.

Every ``IRIS_LOOP_INTERVAL_S`` each worker asks the shared prediction/feedback database
(training.loop_store) two questions and exports the answers as gauges:

- per model version, over predictions of the last ``IRIS_LIVE_WINDOW_S``: how many got
  feedback, how many of those were right (``iris_live_accuracy``), how many are still
  unlabelled;
- over the newest ``IRIS_DRIFT_WINDOW_ROWS`` predictions: PSI and KS of each feature
  against the champion's training profile (training.reference_profile), and the share of
  each predicted species next to its share in the training data.

Every worker computes the same numbers from the same database (gauges in ``mostrecent``
mode), so whichever worker or replica took a prediction or its label, the figures agree.
A database outage (or a database that hangs) is logged once and the gauges keep their
last values; ``iris_loop_updated_timestamp_seconds`` says how old they are, and the
``IrisLoopGaugesStale`` alert fires when they are older than ten minutes.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from serving.served_model import ModelHolder
from training import reference_profile
from training.logs import DistinctErrors
from training.loop_store import FeedbackStore, VersionQuality
from training.schema import FEATURES
from training.settings import Settings

logger = logging.getLogger(__name__)


class LoopMonitor:
    def __init__(self, settings: Settings, store: FeedbackStore, holder: ModelHolder, metrics):
        self.settings = settings
        self.store = store
        self.holder = holder
        self.metrics = metrics
        self._stop = threading.Event()
        self._errors = DistinctErrors(logger, "Live quality/drift updated again")
        self._cleanup_errors = DistinctErrors(logger, "Prediction retention works again")
        self._last_cleanup = 0.0
        self._exported: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="loop-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        self.check_once()
        while not self._stop.wait(self.settings.loop_interval_s):
            self.check_once()

    def check_once(self) -> bool:
        """Recompute every gauge, then (hourly) apply retention; False (logged once per
        distinct error) if the gauges could not be recomputed."""
        try:
            self.update_quality()
            self.update_drift()
        except Exception as e:  # noqa: BLE001 - a monitoring outage never stops serving
            self._errors.failed(logging.WARNING, "Live quality/drift not updated", e)
            return False
        self.metrics.loop_updated.set(time.time())
        self._errors.ok()
        try:
            self._cleanup()
        except Exception as e:  # noqa: BLE001 - tried again in an hour
            self._cleanup_errors.failed(logging.WARNING, "Prediction retention failed", e)
        else:
            self._cleanup_errors.ok()
        return True

    def update_quality(self) -> None:
        since = time.time() - self.settings.live_window_s
        found = {q.model_version: q for q in self.store.quality(since)}
        served = self.holder.current.identity.version
        # Versions exported before that have no prediction in the window any more (a
        # rolled-back version) go to 0 labelled and NaN accuracy, so no alert outlives them.
        for version in (self._exported - found.keys()) | {served}:
            found.setdefault(version, VersionQuality(version, 0, 0, 0))
        self._exported = set(found)
        for version, q in found.items():
            self.metrics.labelled.labels(model_version=version).set(q.labelled)
            self.metrics.unlabelled.labels(model_version=version).set(q.unlabelled)
            # No labels yet: NaN (no accuracy), which no alert threshold matches.
            accuracy = q.accuracy if q.accuracy is not None else float("nan")
            self.metrics.live_accuracy.labels(model_version=version).set(accuracy)

    def update_drift(self) -> dict[str, tuple[float, float]] | None:
        """PSI and KS per feature for the newest rows; None without data or a profile."""
        profile = self.holder.current.profile
        values, species = self.store.recent_inputs(self.settings.drift_window_rows)
        self.metrics.drift_rows.set(len(species))
        if profile is not None:
            for name, share in profile["class_shares"].items():
                self.metrics.class_share.labels(species=name, source="training").set(share)
        if profile is None or not species:
            for name in FEATURES:  # nothing measured: 0, and drift_rows says why
                self.metrics.drift_psi.labels(feature=name).set(0.0)
                self.metrics.drift_ks.labels(feature=name).set(0.0)
            return None
        result = reference_profile.drift(profile, values)
        for name, (psi, ks) in result.items():
            self.metrics.drift_psi.labels(feature=name).set(psi)
            self.metrics.drift_ks.labels(feature=name).set(ks)
        names, counts = np.unique(np.asarray(species), return_counts=True)
        shares = dict(zip(names.tolist(), (counts / counts.sum()).tolist(), strict=True))
        for name in profile["class_shares"]:
            self.metrics.class_share.labels(species=name, source="predicted").set(
                shares.get(name, 0.0)
            )
        return result

    def _cleanup(self) -> None:
        """Once an hour, forget predictions older than the capture retention, and labels
        older than theirs."""
        if time.monotonic() - self._last_cleanup < 3600:
            return
        self._last_cleanup = time.monotonic()
        now = time.time()
        removed = self.store.forget_before(
            now - self.settings.capture_retention_days * 86400,
            now - self.settings.label_retention_days * 86400,
        )
        if removed:
            logger.info("Forgot %d predictions served before the retention window", removed)
