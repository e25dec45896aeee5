"""grpcurl's way in: the standard health service and server reflection, no proto file.

Uses grpcio-health-checking's stubs and grpcio-reflection's own client
(ProtoReflectionDescriptorDatabase) to discover the inference service, build a
ModelInferRequest from the descriptors the server sends, and call it.
"""

from __future__ import annotations

import grpc
from common import config, emit
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "inference.GRPCInferenceService"


def health(channel: grpc.Channel) -> dict:
    stub = health_pb2_grpc.HealthStub(channel)
    result = {}
    for name in ("", SERVICE, "no.such.Service"):
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
            result[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as e:
            result[name] = e.code().name
    return result


def reflected_infer(channel: grpc.Channel, model: str, row: list[float]) -> dict:
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE)
    method = service.methods_by_name["ModelInfer"]
    request_cls = GetMessageClass(method.input_type)
    response_cls = GetMessageClass(method.output_type)
    request = request_cls(model_name=model)
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, len(row)])
    tensor.contents.fp32_contents.extend(row)
    call = channel.unary_unary(
        f"/{SERVICE}/ModelInfer",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    response = call(request, timeout=10)
    return {
        "services": sorted(database.get_services()),
        "methods": sorted(service.methods_by_name),
        "species": [b.decode() for b in response.outputs[0].contents.bytes_contents],
    }


def main() -> None:
    cfg = config()
    with grpc.insecure_channel(cfg["grpc"]) as channel:
        emit(
            {
                "health": health(channel),
                "reflection": reflected_infer(channel, cfg["model"], cfg["rows"][0]),
            }
        )


if __name__ == "__main__":
    main()
