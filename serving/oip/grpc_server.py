"""``inference.GRPCInferenceService`` served from every BentoML worker.

BentoML's new-style services have no gRPC path, so each worker starts a ``grpc.aio``
server on its own event loop at startup. gRPC sets SO_REUSEPORT on Linux, so all workers
bind the same port and the kernel spreads connections across them. Every RPC reads the
same in-memory model as HTTP, so a hot reload reaches both protocols at the same moment.

Every call is counted and timed (``serving.oip.grpc_metrics``). Beside the inference
service the port answers the standard health service (``grpc.health.v1.Health``: what
Kubernetes gRPC probes and ``grpc_health_probe`` call; ``SERVING`` for ``""`` and for
``inference.GRPCInferenceService`` once the worker serves a model, ``NOT_SERVING`` while it
shuts down) and server reflection, so ``grpcurl`` lists and calls it with no proto file.

A busy gRPC port fails the whole server fast. Before any worker starts, BentoML's
deployment hook (``service.py``) runs :func:`ensure_port_free` in the server process;
if another socket already listens on ``IRIS_GRPC_HOST:IRIS_GRPC_PORT``, the server logs
one line naming the port and ``IRIS_GRPC_PORT`` and exits with status
:data:`PORT_BUSY_EXIT`. A supervisor (systemd, Kubernetes) then sees a failed start and
says why, instead of a server whose workers restart every few seconds while ``/readyz``
answers 200 and gRPC never does. (Serving HTTP alone would hide the failure from every
gRPC client; a half-working server is worse than a clear refusal to start.)

About 250 lines: the six protocol RPCs, the repository RPCs and the health/reflection
wiring are one service definition; the protocol's logic itself lives in
``serving.oip.protocol``, ``binary``, ``versions`` and ``repository``.
"""

from __future__ import annotations

import errno
import logging
import socket

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.oip import binary, versions
from serving.oip import protocol as oip
from serving.oip.grpc_metrics import MetricsInterceptor, get_grpc_metrics, method_names
from serving.oip.proto import grpc_predict_v2_pb2 as pb
from serving.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.oip.repository import get_repository
from serving.runtime import get_runtime

logger = logging.getLogger(__name__)

CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}
DENIED = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):  # noqa: N802 - protocol method names
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(**oip.server_metadata())

    async def ModelReady(self, request, context):  # noqa: N802
        try:
            await versions.resolve(request.name, request.version)
        except oip.InferError as e:
            if e.kind == "unavailable":  # unloaded: a plain "not ready", as the protocol says
                return pb.ModelReadyResponse(ready=False)
            await context.abort(CODES[e.kind], str(e))
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):  # noqa: N802
        model = await self._served(request.name, request.version, context)
        identity = model.identity
        meta = oip.model_metadata(identity.name, identity.version, identity.runtime)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request, context):  # noqa: N802
        model = await self._served(request.model_name, request.model_version, context)
        try:
            rows, raw = _decode(request)
            wanted = oip.requested([o.name for o in request.outputs])
        except oip.InferError as e:
            await context.abort(CODES[e.kind], str(e))
        species, proba, prediction_id = await versions.classify(model, rows, "oip_grpc")
        response = pb.ModelInferResponse(
            model_name=model.identity.name, model_version=model.identity.version, id=request.id
        )
        # For POST /feedback (rows: "<id>-<row>"), as over REST.
        response.parameters["prediction_id"].string_param = prediction_id
        for tensor in oip.outputs(species, proba, wanted):
            out = response.outputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
            )
            if raw:
                response.raw_output_contents.append(binary.tensor_bytes(tensor))
            elif tensor.datatype == "BYTES":
                out.contents.bytes_contents.extend(s.encode() for s in tensor.data)
            else:
                out.contents.fp32_contents.extend(tensor.data.tolist())
        return response

    async def RepositoryIndex(self, request, context):  # noqa: N802
        model = versions.get_versions().holder.current
        entry = pb.RepositoryIndexResponse.ModelIndex
        listed = get_repository().index(model, ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[entry(**m) for m in listed])

    async def RepositoryModelLoad(self, request, context):  # noqa: N802
        await self._change(request.model_name, context, load=True)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):  # noqa: N802
        await self._change(request.model_name, context, load=False)
        return pb.RepositoryModelUnloadResponse()

    async def _change(self, name: str, context, *, load: bool) -> None:
        repository = get_repository()
        metadata = dict(context.invocation_metadata() or ())
        denied = repository.authorize(metadata.get("authorization"))
        if denied is not None:
            await context.abort(DENIED[denied.status], denied.message)
        try:
            repository.check_name(name, versions.get_versions().holder.current.identity.name)
        except oip.InferError as e:
            await context.abort(CODES[e.kind], str(e))
        if load:
            repository.load()
            get_runtime().watcher.poke()
        else:
            repository.unload()

    async def _served(self, name: str, version: str, context):
        try:
            return await versions.resolve(name, version)
        except oip.InferError as e:
            await context.abort(CODES[e.kind], str(e))


def _decode(request) -> tuple[np.ndarray, bool]:
    """The single input tensor as (N, 4) rows, and whether it came as raw bytes."""
    if len(request.inputs) != 1:
        raise oip.InferError(f"expected exactly one input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    dtype = oip.INPUT_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise oip.InferError(
            f"input datatype {tensor.datatype!r} is not supported; use FP32 or FP64"
        )
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise oip.InferError("raw_input_contents must hold exactly one buffer")
        buffer = request.raw_input_contents[0]
        if len(buffer) % dtype.itemsize:
            raise oip.InferError(
                f"raw input of {len(buffer)} bytes is not a whole number of {tensor.datatype}"
            )
        values = np.frombuffer(buffer, dtype=dtype)
        raw = True
    else:
        contents = (
            tensor.contents.fp32_contents
            if tensor.datatype == "FP32"
            else tensor.contents.fp64_contents
        )
        values = np.asarray(contents, dtype=np.float64)
        raw = False
    limit = get_runtime().settings.max_batch_size
    return oip.rows_from(tensor.datatype, shape, values.astype(np.float64), limit), raw


PORT_BUSY_EXIT = 3
"""Exit status of ``bentoml serve`` when the gRPC port is taken."""


class GrpcPortBusyError(SystemExit):
    """The gRPC port is held by another socket; raised before any worker starts."""


def ensure_port_free(host: str, port: int) -> None:
    """Exit the server (status PORT_BUSY_EXIT) if ``host:port`` cannot be bound for gRPC.

    Runs before any of our workers exists, so it binds *without* SO_REUSEPORT: any
    listener on the port makes the bind fail, including another gRPC server (Triton,
    MLServer, a second copy of this one), which sets SO_REUSEPORT itself and would
    otherwise silently share the port's traffic with our workers.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as e:
            busy = e.errno in (errno.EADDRINUSE, errno.EACCES)
            message = (
                f"gRPC port {host}:{port} is already in use by another process ({e.strerror}); "
                "free it or set IRIS_GRPC_PORT to another port (0 disables gRPC)"
                if busy
                else f"gRPC cannot bind {host}:{port} ({e.strerror or e}); check IRIS_GRPC_HOST"
            )
            logger.critical(message)
            raise GrpcPortBusyError(PORT_BUSY_EXIT) from None


SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


class GrpcServer:
    """One worker's gRPC server and its health service."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer):
        self.server = server
        self.health = health_servicer

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()  # probes see NOT_SERVING while draining
        await self.server.stop(grace=grace)


async def start(host: str, port: int) -> GrpcServer:
    """Start the gRPC server on the running loop (one per worker; SO_REUSEPORT shares the port)."""
    metrics = get_grpc_metrics()
    metrics.precreate([*method_names(SERVICE), f"{HEALTH.full_name}/Check"])
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(metrics)],
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 8 << 20)],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE.full_name, HEALTH.full_name, reflection.SERVICE_NAME], server
    )
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise RuntimeError(f"could not bind gRPC to {address} (IRIS_GRPC_PORT)")
    await server.start()
    for name in ("", SERVICE.full_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("gRPC Open Inference Protocol listening on %s", address)
    return GrpcServer(server, health_servicer)
