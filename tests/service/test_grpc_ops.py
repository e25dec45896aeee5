"""What an operator sees of gRPC: metrics per method and code, and a busy port."""

from __future__ import annotations

import re
import socket
import subprocess

import grpc
import httpx
import pytest

from harness.processes import free_port
from harness.servers import start_bento
from serving.oip.grpc_server import PORT_BUSY_EXIT
from serving.oip.proto import grpc_predict_v2_pb2 as pb
from serving.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

INFER = "inference.GRPCInferenceService/ModelInfer"


def samples(server, name: str) -> dict[str, float]:
    """``{label text: value}`` of one metric family on the server's /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def count(server, method: str, code: str) -> float:
    for labels, value in samples(server, "iris_grpc_requests_total").items():
        if f'method="{method}"' in labels and f'code="{code}"' in labels:
            return value
    return -1.0  # the series does not exist


def test_every_method_has_an_ok_series_from_start_up(server):
    counted = samples(server, "iris_grpc_requests_total")
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert any(
            f'method="{service.full_name}/{method.name}"' in labels and 'code="OK"' in labels
            for labels in counted
        ), method.name


def test_grpc_calls_are_counted_by_code_and_timed(server):
    ok_before = count(server, INFER, "OK")
    missing_before = max(count(server, INFER, "NOT_FOUND"), 0.0)
    timed = samples(server, "iris_grpc_request_duration_seconds_count")
    timed_before = next(v for k, v in timed.items() if INFER in k)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="iris-classifier")
        request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
        request.inputs[0].contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
        stub.ModelInfer(request, timeout=10)
        request.model_name = "resnet"
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request, timeout=10)
    assert count(server, INFER, "OK") == ok_before + 1
    assert count(server, INFER, "NOT_FOUND") == missing_before + 1
    timed = samples(server, "iris_grpc_request_duration_seconds_count")
    assert next(v for k, v in timed.items() if INFER in k) == timed_before + 2


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain socket", "SO_REUSEPORT"])
def test_busy_grpc_port_fails_the_server_fast_with_one_clear_line(
    trained_home, tmp_path, reuseport
):
    """A listening socket on the gRPC port: the server exits, it does not loop. Also when the
    holder sets SO_REUSEPORT, as every gRPC server does (Triton, MLServer, another copy of
    this one): the port would otherwise be silently shared."""
    port = free_port()
    with socket.socket() as holder:
        if reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        server = start_bento({**trained_home.env, "IRIS_GRPC_PORT": str(port)}, tmp_path)
        try:
            code = server.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running with its gRPC port taken:\n{server.log()[-3000:]}")
        finally:
            server.stop()
    assert code == PORT_BUSY_EXIT, server.log()[-3000:]
    lines = [line for line in server.log().splitlines() if "already in use" in line]
    assert len(lines) == 1, server.log()[-3000:]
    assert f"127.0.0.1:{port}" in lines[0] and "IRIS_GRPC_PORT" in lines[0]
    assert "_bentoml_impl.worker" not in server.log()  # no worker was started at all
