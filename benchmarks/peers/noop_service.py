"""No-op BentoML peer: our request shape and worker count, no model (the framework ceiling).

Same input model (``serving.schemas.IrisFeatures``), same API style (async), same
``workers``/``traffic`` settings as ``service.py``; it answers a constant dict the size of
our ``/predict`` answer. No middleware, mounted apps or gRPC: what is left is BentoML, run
by the same server settings (uvloop, one accept at a time, BentoML's request-timer fix).

Run: ``bentoml serve benchmarks.peers.noop_service:NoopIris``.
"""

from __future__ import annotations

import bentoml

from serving.bentoml_fixes import configure_server
from serving.schemas import IrisFeatures

configure_server()  # as service.py

# The shape of our answer, with values of the same length (as ours).
RESPONSE = {
    "species": "Iris-setosa",
    "probabilities": {
        "Iris-setosa": 1.0,
        "Iris-versicolor": 0.0,
        "Iris-virginica": 0.0,
    },
    "model": {"name": "iris-classifier", "version": "1", "alias": "champion", "runtime": "onnx"},
}


@bentoml.service(
    name="iris_noop",
    workers="cpu_count",
    traffic={"timeout": 30, "max_concurrency": 512},
    http={"port": 3000},
)
class NoopIris:
    """Validates the request like our service, then answers without doing any work."""

    @bentoml.api(input_spec=IrisFeatures, route="/predict")
    async def predict(
        self, sepal_length: float, sepal_width: float, petal_length: float, petal_width: float
    ) -> dict:
        return RESPONSE
