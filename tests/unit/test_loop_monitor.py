"""Live quality from the shared store, including versions that leave the window."""

from __future__ import annotations

import math
import time

from serving.loop_monitor import LoopMonitor
from serving.runtime import ModelHolder
from tests.unit.test_champion_watch import _served
from training.loop_store import FeedbackStore
from training.schema import FEATURES
from training.settings import Settings


class _Gauge:
    def __init__(self):
        self.values: dict[tuple, float] = {}

    def labels(self, **labels):
        key = tuple(sorted(labels.items()))
        gauge = self

        class _Child:
            def set(self, value):
                gauge.values[key] = value

        return _Child()

    def set(self, value):
        self.values[()] = value


class _Metrics:
    def __getattr__(self, name):
        gauge = _Gauge()
        setattr(self, name, gauge)
        return gauge


def test_a_version_that_leaves_the_window_stops_reporting_its_accuracy(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'loop.sqlite'}")
    now = time.time()
    rows = dict.fromkeys(FEATURES, 1.0)
    store.index(
        {
            **rows,
            "prediction_id": f"{i:032x}",
            "time": now,
            "model_version": "3",
            "role": "champion",
            "species": "Iris-setosa",
        }
        for i in range(4)
    )
    store.label([(f"{i:032x}", "Iris-virginica" if i else "Iris-setosa") for i in range(4)])
    settings = Settings(home=tmp_path, live_window_s=3600)
    metrics = _Metrics()
    monitor = LoopMonitor(settings, store, ModelHolder(_served("4")), metrics)
    monitor.update_quality()
    key = (("model_version", "3"),)
    assert metrics.live_accuracy.values[key] == 0.25
    assert metrics.labelled.values[key] == 4
    assert math.isnan(metrics.live_accuracy.values[(("model_version", "4"),)])  # no labels yet

    settings.live_window_s = 0.001  # v3 rolled back long ago: nothing of it in the window
    time.sleep(0.01)
    monitor.update_quality()
    assert metrics.labelled.values[key] == 0
    assert math.isnan(metrics.live_accuracy.values[key])
