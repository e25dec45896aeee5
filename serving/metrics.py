"""Prometheus metrics of our own, exposed on BentoML's /metrics beside its built-in ones.

Created lazily (``bentoml.metrics`` must be used inside a server process, where BentoML
has set up multiprocess collection across workers).
"""

from __future__ import annotations

from functools import lru_cache


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
        self.served_version = bentoml.metrics.Gauge(
            name="iris_served_model_version",
            documentation="Registry version each worker serves (one series per worker process).",
            labelnames=["model_name"],
            multiprocess_mode="liveall",
        )

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
