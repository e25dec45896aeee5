"""Prometheus metrics for gRPC calls, like BentoML's for HTTP, on the same /metrics.

``iris_grpc_requests_total{method,code}`` counts every unary call by its full method name
(``inference.GRPCInferenceService/ModelInfer``) and gRPC status code name (``OK``,
``INVALID_ARGUMENT``, ...); ``iris_grpc_request_duration_seconds{method}`` times them.
Both are created through ``bentoml.metrics`` inside a worker, so BentoML's multiprocess
collection adds up every worker, and every method's ``OK`` series exists from start-up
(a rate or an alert sees the first call, not only the second).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from functools import lru_cache
from typing import Any

import grpc

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GrpcMetrics:
    def __init__(self) -> None:
        import bentoml

        self.requests = bentoml.metrics.Counter(
            name="iris_grpc_requests_total",
            documentation="gRPC calls answered, by method and status code.",
            labelnames=["method", "code"],
        )
        self.duration = bentoml.metrics.Histogram(
            name="iris_grpc_request_duration_seconds",
            documentation="Time to answer a gRPC call, by method.",
            labelnames=["method"],
            buckets=BUCKETS,
        )

    def precreate(self, methods: Iterable[str]) -> None:
        """Make every method's ``OK`` series (and its histogram) exist at zero."""
        for method in methods:
            self.requests.labels(method=method, code="OK")
            self.duration.labels(method=method)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.duration.labels(method=method).observe(seconds)


@lru_cache
def get_grpc_metrics() -> GrpcMetrics:
    return GrpcMetrics()


def method_names(*services: Any) -> list[str]:
    """``package.Service/Method`` for every method of the given service descriptors."""
    return [f"{s.full_name}/{m.name}" for s in services for m in s.methods]


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary-unary call; streaming calls pass through untouched."""

    def __init__(self, metrics: GrpcMetrics):
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.lstrip("/")
        behaviour = handler.unary_unary
        metrics = self.metrics

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "UNKNOWN"
            try:
                response = await behaviour(request, context)
                code = _code_name(context.code(), "OK")
                return response
            except grpc.aio.AbortError:
                code = _code_name(context.code(), "UNKNOWN")
                raise
            finally:
                metrics.observe(method, code, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code_name(code: grpc.StatusCode | int | None, default: str) -> str:
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # the aio context may report the numeric value
        if status.value[0] == code:
            return status.name
    return default
