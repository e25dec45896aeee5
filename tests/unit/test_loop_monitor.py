"""Live quality from the shared store, including versions that leave the window."""

from __future__ import annotations

import math
import time

from serving.loop_monitor import LoopMonitor
from serving.served_model import ModelHolder
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


def test_concurrent_labels_for_the_same_ids_count_once(tmp_path):
    """Two /feedback calls racing on one id (a retry after a timeout, two workers): one
    label is added, the other call reports it unchanged or corrected, never both added."""
    import threading

    uri = f"sqlite:///{tmp_path / 'loop.sqlite'}"
    FeedbackStore(uri).index(
        {
            **dict.fromkeys(FEATURES, 1.0),
            "prediction_id": f"{i:032x}",
            "time": time.time(),
            "model_version": "1",
            "role": "champion",
            "species": "Iris-setosa",
        }
        for i in range(200)
    )
    labels = [(f"{i:032x}", "Iris-setosa") for i in range(200)]
    results, barrier = [], threading.Barrier(4)

    def call():
        store = FeedbackStore(uri)  # each as its own worker would
        barrier.wait()
        results.append(store.label(labels))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r.added) for r in results) == 200
    assert sum(r.unchanged for r in results) == 3 * 200
    assert all(r.updated == 0 for r in results)
