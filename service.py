"""The BentoML service: predict (single and batch), retrain, and the mounted apps (/v2, /jobs,
/feedback) of the Iris model.

Thin on purpose: request/response models live in serving.schemas, the per-worker runtime
(model, hot reload, metrics, jobs) in serving.runtime. Run it with
``bentoml serve service:IrisClassifier``.
"""

from __future__ import annotations

import gc

import bentoml
import numpy as np
from bentoml.models import BentoModel
from starlette.responses import Response

from serving import drain
from serving.auth import admin_denied
from serving.bentoml_fixes import configure_server
from serving.errors import json_error
from serving.feedback_api import feedback_app
from serving.guard import GuardMiddleware
from serving.jobs_api import jobs_app, start_retrain
from serving.oip import grpc_server, repository
from serving.oip.routes import oip_app
from serving.routing import MountRoots, OpenAPIDocument
from serving.runtime import IrisRuntime
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    IrisFeatures,
    PredictResponse,
    RetrainResponse,
    feature_rows,
)
from training.logs import configure_logging
from training.settings import get_settings

# uvloop accepting one connection at a time; BentoML's per-request timers cancelled.
configure_server()

# Every dependency is a wheel, so the image needs no compilers: a distro BentoML does not
# know ("none") skips its default apt layer (build-essential, git: ~650 MB).
IMAGE = bentoml.images.Image(base_image="python:3.11-slim", distro="none")


@bentoml.service(
    name="iris_classifier",
    image=IMAGE,
    workers="cpu_count",
    traffic={"timeout": 30, "max_concurrency": 512},
    http={"port": 3000},
)
@bentoml.asgi_app(jobs_app, path="/jobs")
@bentoml.asgi_app(feedback_app, path="/feedback")
@bentoml.asgi_app(oip_app, path="/v2")
class IrisClassifier:
    """Classifies iris flowers into species from four measurements in centimetres."""

    bento_model = BentoModel("iris-classifier:latest")

    def __init__(self) -> None:
        settings = get_settings()
        # BentoML's access log (one line per request) also goes to our file.
        configure_logging(
            settings.log_level, settings.log_dir, "service.log", file_only=("bentoml.access",)
        )
        self.runtime = IrisRuntime.start(self.bento_model, settings)
        self.grpc = None

    @bentoml.on_deployment
    def _before_workers() -> None:
        """Once, before any worker starts: a busy gRPC port fails the server fast, and an
        Open Inference Protocol unload from a previous run is forgotten."""
        settings = get_settings()
        repository.clear(settings)
        if settings.grpc_port:
            grpc_server.ensure_port_free(settings.grpc_host, settings.grpc_port)

    @bentoml.on_startup
    async def _on_worker_start(self) -> None:
        settings = self.runtime.settings
        drain.install(settings.drain_s)  # uvicorn's SIGTERM handler is in place by now
        if settings.grpc_port:
            self.grpc = await grpc_server.start(settings.grpc_host, settings.grpc_port)
        # Everything loaded so far (frameworks, the model) lives as long as the worker:
        # keep it out of every future garbage collection, which otherwise walks the whole
        # heap and shows up as p99 spikes under load (see benchmarks/README.md).
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        # gRPC first: its last answers still reach the capture writer, which then flushes.
        if self.grpc is not None:
            await self.grpc.stop(grace=2)
        self.runtime.stop()

    @bentoml.api(input_spec=IrisFeatures, output_spec=PredictResponse, route="/predict")
    async def predict(
        self,
        sepal_length: float,
        sepal_width: float,
        petal_length: float,
        petal_width: float,
        ctx: bentoml.Context,
    ) -> Response:
        """Classify one flower: species, class probabilities, and the model that answered.

        Returns a ready JSON ``Response`` (a ``PredictResponse``, with ``X-Prediction-Id``).
        """
        row = np.array([[sepal_length, sepal_width, petal_length, petal_width]], dtype=np.float32)
        key = ctx.request.headers.get(self.runtime.settings.canary_key_header)
        return await self.runtime.predict_rows(row, single=True, client_key=key)

    @bentoml.api(input_spec=BatchRequest, output_spec=BatchResponse, route="/predict_batch")
    async def predict_batch(self, records=None, instances=None) -> Response:
        """Classify many flowers in one request; one prediction per flower, in order.

        Returns a ready JSON ``Response``: a ``BatchResponse``, or 413 over the batch limit.
        """
        rows = feature_rows(records, instances)
        limit = self.runtime.settings.max_batch_size
        if len(rows) > limit:
            return json_error(
                413, f"batch has {len(rows)} flowers; the limit is {limit} (IRIS_MAX_BATCH_SIZE)"
            )
        return await self.runtime.predict_rows(rows, single=False)

    @bentoml.api(output_spec=RetrainResponse, route="/retrain")
    async def retrain(self, ctx: bentoml.Context) -> Response:
        """Start retraining in the background. Needs the admin bearer token.

        ``?include_feedback=true`` also trains on served predictions that got ground truth.
        Returns a ready JSON ``Response``: 202 with a ``RetrainResponse``, or an error.
        """
        response = admin_denied(self.runtime.settings, ctx.request.headers.get("authorization"))
        if response is None:
            query = ctx.request.query_params.get("include_feedback", "false").lower()
            if query not in ("true", "false", "1", "0"):
                response = json_error(422, "include_feedback must be true or false")
            else:
                response = await start_retrain(self.runtime, query in ("true", "1"))
        # BentoML copies the context's status onto responses of APIs that take ctx (it
        # sends a returned Response as it is: output_spec only documents it).
        ctx.response.status_code = response.status_code
        return response


IrisClassifier.add_asgi_middleware(
    GuardMiddleware,
    max_body_bytes=get_settings().max_body_bytes,
    body_timeout_s=get_settings().body_timeout_s,
)
IrisClassifier.add_asgi_middleware(OpenAPIDocument)
IrisClassifier.add_asgi_middleware(MountRoots, roots=("/v2", "/feedback"))
IrisClassifier.add_asgi_middleware(drain.DrainMiddleware)
