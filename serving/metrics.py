"""Prometheus metrics of our own, exposed on BentoML's /metrics beside its built-in ones.

Created lazily (``bentoml.metrics`` must be used inside a server process, where BentoML
has set up multiprocess collection across workers).

Two rules keep every signal honest:

- Every label set an alert reads exists from start-up, at 0 (:meth:`Metrics.start`), so
  ``increase()`` sees the first event after a start instead of a series that appears at 1.
- Per-worker series (``liveall``/``livesum`` gauges) leave with their worker. prometheus
  client removes a worker's file only when the worker exits cleanly; a worker killed with
  SIGKILL would be exported forever (a ghost worker on the dashboard, and a false
  "workers disagree" alert after the next promotion). :func:`forget_dead_workers` removes
  the files of processes that no longer run; every worker calls it at start and at every
  registry poll.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

from serving.capture_reports import DROP_REASONS
from training.schema import CHALLENGER, CHAMPION

logger = logging.getLogger(__name__)

RETRAIN_OUTCOMES = (("succeeded", "true"), ("succeeded", "false"), ("failed", "false"))
"""Every (outcome, promoted) pair a retrain can end with."""


class Metrics:
    def __init__(self) -> None:
        import bentoml

        self.predictions = bentoml.metrics.Counter(
            name="iris_predictions_total",
            documentation="Flowers classified, by predicted species and model version.",
            labelnames=["species", "model_version"],
        )
        self.retrain_jobs = bentoml.metrics.Counter(
            name="iris_retrain_jobs_total",
            documentation="Retrain jobs finished, by outcome (succeeded, failed) and promotion.",
            labelnames=["outcome", "promoted"],
        )
        self.model_reloads = bentoml.metrics.Counter(
            name="iris_model_reloads_total",
            documentation="Hot reloads of a new champion into a worker.",
        )
        self.model_reload_failures = bentoml.metrics.Counter(
            name="iris_model_reload_failures_total",
            documentation="Attempts to load a new registry version that failed, by alias "
            "(champion: the old one kept serving; challenger: no shadow or canary).",
            labelnames=["alias"],
        )
        self.captured = bentoml.metrics.Counter(
            name="iris_captured_total",
            documentation="Rows of served answers written to the capture files (the "
            "shadow's rows: iris_shadow_scored_total). A spool file processed again after its "
            "sink was killed counts twice; its rows are written once.",
        )
        self.capture_dropped = bentoml.metrics.Counter(
            name="iris_capture_dropped_total",
            documentation="Rows not captured, by reason: queue_full (the capture sink is "
            "behind), stopping (answered while the worker stopped), not_spooled (the worker "
            "could not queue or spool them), unreadable (their spool file), not_written (their "
            "Parquet file; shadow rows included). The service log says more.",
            labelnames=["reason"],
        )
        # The loop after deployment: ground truth and drift (serving/loop_monitor.py).
        self.feedback = bentoml.metrics.Counter(
            name="iris_feedback_total",
            documentation="New ground-truth labels stored (a prediction's first label; a "
            "correction is not counted again), by model version and whether the served "
            "answer was correct.",
            labelnames=["model_version", "correct"],
        )
        self.live_accuracy = bentoml.metrics.Gauge(
            name="iris_live_accuracy",
            documentation="Accuracy of served answers that got feedback, per model version, "
            "over predictions of the last IRIS_LIVE_WINDOW_S.",
            labelnames=["model_version"],
            multiprocess_mode="mostrecent",
        )
        self.labelled = bentoml.metrics.Gauge(
            name="iris_predictions_labelled",
            documentation="Predictions of the live window that have feedback, per version.",
            labelnames=["model_version"],
            multiprocess_mode="mostrecent",
        )
        self.unlabelled = bentoml.metrics.Gauge(
            name="iris_predictions_unlabelled",
            documentation="Predictions of the live window still without feedback, per version.",
            labelnames=["model_version"],
            multiprocess_mode="mostrecent",
        )
        self.drift_psi = bentoml.metrics.Gauge(
            name="iris_drift_psi",
            documentation="Population stability index of recent inputs against the "
            "champion's training data, per feature.",
            labelnames=["feature"],
            multiprocess_mode="mostrecent",
        )
        self.drift_ks = bentoml.metrics.Gauge(
            name="iris_drift_ks",
            documentation="Kolmogorov-Smirnov statistic of recent inputs against the "
            "champion's training data, per feature.",
            labelnames=["feature"],
            multiprocess_mode="mostrecent",
        )
        self.class_share = bentoml.metrics.Gauge(
            name="iris_class_share",
            documentation="Share of each species among recent answers (source=predicted) "
            "and in the champion's training data (source=training).",
            labelnames=["species", "source"],
            multiprocess_mode="mostrecent",
        )
        self.loop_updated = bentoml.metrics.Gauge(
            name="iris_loop_updated_timestamp_seconds",
            documentation="Unix time the live quality and drift gauges were last recomputed "
            "(by any worker): their values are as old as this.",
            multiprocess_mode="max",
        )
        self.drift_rows = bentoml.metrics.Gauge(
            name="iris_drift_window_rows",
            documentation="Recent predictions the drift gauges were computed from.",
            multiprocess_mode="mostrecent",
        )
        self.shadow_scored = bentoml.metrics.Counter(
            name="iris_shadow_scored_total",
            documentation="Flowers the challenger also scored in shadow, per (champion, "
            "challenger) pair.",
            labelnames=["champion", "challenger"],
        )
        self.shadow_agreed = bentoml.metrics.Counter(
            name="iris_shadow_agreed_total",
            documentation="Flowers scored in shadow whose species the champion named too.",
            labelnames=["champion", "challenger"],
        )
        self.shadow_failed = bentoml.metrics.Counter(
            name="iris_shadow_failed_total",
            documentation="Flowers the challenger failed to score in shadow (failed to load "
            "or raised; the answer was not affected).",
            labelnames=["champion", "challenger"],
        )
        self.shadow_skipped = bentoml.metrics.Counter(
            name="iris_shadow_skipped_total",
            documentation="Flowers not scored in shadow because the capture sink was behind.",
        )
        self.challenger_loads = bentoml.metrics.Counter(
            name="iris_challenger_loads_total",
            documentation="New registry challengers loaded beside the champion.",
        )
        self.served_version = bentoml.metrics.Gauge(
            name="iris_served_model_version",
            documentation="Registry version each worker serves (one series per worker process).",
            labelnames=["model_name"],
            multiprocess_mode="liveall",
        )

    def start(self, name: str, version: str) -> None:
        """At worker start: create every series at 0, drop dead workers' series."""
        forget_dead_workers()
        for outcome, promoted in RETRAIN_OUTCOMES:
            self.retrain_jobs.labels(outcome=outcome, promoted=promoted)
        self.model_reloads.inc(0)
        for alias in (CHAMPION, CHALLENGER):
            self.model_reload_failures.labels(alias=alias)
        self.captured.inc(0)
        self.shadow_skipped.inc(0)
        self.challenger_loads.inc(0)
        for reason in DROP_REASONS:
            self.capture_dropped.labels(reason=reason)
        # The loop gauges are set by serving.loop_monitor, first at worker start.
        self.serving(name, version)

    def record(self, species: list[str], version: str) -> None:
        if len(species) == 1:
            self.predictions.labels(species=species[0], model_version=version).inc()
            return
        counts: dict[str, int] = {}
        for name in species:
            counts[name] = counts.get(name, 0) + 1
        for name, n in counts.items():
            self.predictions.labels(species=name, model_version=version).inc(n)

    def serving(self, name: str, version: str) -> None:
        try:
            value = float(version)
        except ValueError:
            value = -1.0
        self.served_version.labels(model_name=name).set(value)


@lru_cache
def get_metrics() -> Metrics:
    return Metrics()


_LIVE_FILE = re.compile(r"^gauge_live(?:all|sum|max|min|mostrecent)_(\d+)\.db$")


def forget_dead_workers(directory: str | None = None) -> list[int]:
    """Remove the per-process gauge files of processes that no longer run.

    Returns:
        The PIDs whose series were removed (empty outside a multiprocess server).
    """
    from prometheus_client import multiprocess

    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or not Path(directory).is_dir():
        return []
    dead = sorted(
        {
            int(m.group(1))
            for path in Path(directory).iterdir()
            if (m := _LIVE_FILE.match(path.name)) and not _running(int(m.group(1)))
        }
    )
    for pid in dead:
        with contextlib.suppress(OSError):  # another worker removed it first
            multiprocess.mark_process_dead(pid, directory)
    if dead:
        logger.info("Removed the metrics of dead worker process(es) %s", dead)
    return dead


def _running(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie counts as dead)."""
    from serving.jobs import process_start_time

    return process_start_time(pid) is not None
