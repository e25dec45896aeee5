"""Open Inference Protocol (KServe V2) over REST and gRPC against a real server."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest

from serving.oip.proto import grpc_predict_v2_pb2 as pb
from serving.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from training.schema import FEATURES

pytestmark = pytest.mark.integration

MODEL = "iris-classifier"
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def test_rows(trained_home) -> np.ndarray:
    return pd.read_csv(trained_home.test_csv)[list(FEATURES)].to_numpy()


def infer_request(
    rows, *, raw: bool = False, datatype: str = "FP32", outputs=(), version: str = ""
) -> pb.ModelInferRequest:
    rows = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version, id="req-1")
    tensor = request.inputs.add(name="features", datatype=datatype, shape=list(rows.shape))
    if raw:
        request.raw_input_contents.append(rows.astype(rows.dtype.newbyteorder("<")).tobytes())
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    else:
        tensor.contents.fp64_contents.extend(rows.ravel().tolist())
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs)
    return request


def decode_raw_bytes(buffer: bytes) -> list[str]:
    out, i = [], 0
    while i < len(buffer):
        n = int.from_bytes(buffer[i : i + 4], "little")
        out.append(buffer[i + 4 : i + 4 + n].decode())
        i += 4 + n
    return out


def http_answers(server, rows) -> tuple[list[str], np.ndarray]:
    body = httpx.post(
        server.url + "/predict_batch", json={"instances": np.asarray(rows).tolist()}
    ).json()
    species = [p["species"] for p in body["predictions"]]
    classes = list(body["predictions"][0]["probabilities"])
    proba = np.array([[p["probabilities"][c] for c in classes] for p in body["predictions"]])
    return species, proba


# -- gRPC ---------------------------------------------------------------------------


def test_grpc_health_and_metadata(stub, trained_home):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == MODEL
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    version = trained_home.result["version"]
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version=version)).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    assert list(meta.versions) == [version]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("features", "FP32", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("predicted_species", "BYTES", [-1]),
        ("probabilities", "FP32", [-1, 3]),
    ]


@pytest.mark.parametrize("raw", [False, True], ids=["typed-contents", "raw-contents"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_grpc_batch_infer_equals_http_predict_for_the_whole_test_set(
    stub, server, test_rows, raw, datatype
):
    response = stub.ModelInfer(infer_request(test_rows, raw=raw, datatype=datatype))
    assert response.model_name == MODEL and response.id == "req-1"
    names = [o.name for o in response.outputs]
    assert names == ["predicted_species", "probabilities"]
    if raw:
        species = decode_raw_bytes(response.raw_output_contents[0])
        proba = np.frombuffer(response.raw_output_contents[1], dtype="<f4").reshape(-1, 3)
    else:
        species = [b.decode() for b in response.outputs[0].contents.bytes_contents]
        proba = np.array(response.outputs[1].contents.fp32_contents).reshape(-1, 3)
    assert list(response.outputs[1].shape) == [len(test_rows), 3]
    http_species, http_proba = http_answers(server, test_rows)
    assert species == http_species
    np.testing.assert_allclose(proba, http_proba, atol=1e-6)


def test_grpc_honours_requested_outputs(stub):
    response = stub.ModelInfer(infer_request([ROW], outputs=["predicted_species"]))
    assert [o.name for o in response.outputs] == ["predicted_species"]
    assert list(response.outputs[0].contents.bytes_contents) == [b"Iris-setosa"]


@pytest.mark.parametrize(
    ("mutate", "code", "text"),
    [
        (lambda r: setattr(r, "model_name", "resnet"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (lambda r: setattr(r, "model_version", "999"), grpc.StatusCode.NOT_FOUND, "no version"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 3), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (
            lambda r: setattr(r.inputs[0], "datatype", "INT64"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "datatype",
        ),
        (
            lambda r: r.inputs[0].contents.fp32_contents.__setitem__(0, float("nan")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            lambda r: r.inputs[0].contents.fp32_contents.__setitem__(2, -1.0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "petal_length",
        ),
        (
            lambda r: r.inputs[0].contents.fp32_contents.append(1.0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "values",
        ),
        (
            lambda r: r.outputs.add(name="logits"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown output",
        ),
        (
            lambda r: r.inputs.add(name="extra", datatype="FP32"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly one",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "bad-shape",
        "bad-datatype",
        "nan",
        "negative",
        "size-mismatch",
        "unknown-output",
        "two-inputs",
    ],
)
def test_grpc_errors_use_protocol_status_codes(stub, mutate, code, text):
    request = infer_request([ROW])
    mutate(request)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == code
    assert text in error.value.details()


def test_grpc_model_ready_for_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelReady(pb.ModelReadyRequest(name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


# -- REST ---------------------------------------------------------------------------


def test_rest_health_and_metadata(server, trained_home):
    version = trained_home.result["version"]
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2").json()["name"] == MODEL
        for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/{version}"):
            meta = client.get(path).json()
            assert meta["versions"] == [version]
            assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
            assert client.get(path + "/ready").json()["ready"] is True
        assert client.get("/v2/models/nope").status_code == 404
        assert client.get(f"/v2/models/{MODEL}/versions/999/ready").status_code == 404


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_rest_infer_equals_http_predict(server, test_rows, layout):
    data = test_rows.ravel().tolist() if layout == "flat" else test_rows.tolist()
    body = {
        "id": "x",
        "inputs": [
            {"name": "features", "shape": list(test_rows.shape), "datatype": "FP64", "data": data}
        ],
    }
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    out = {o["name"]: o for o in response.json()["outputs"]}
    assert response.json()["id"] == "x"
    species, proba = http_answers(server, test_rows)
    assert out["predicted_species"]["data"] == species
    assert out["probabilities"]["shape"] == [len(test_rows), 3]
    np.testing.assert_allclose(
        np.array(out["probabilities"]["data"]).reshape(-1, 3), proba, atol=1e-6
    )


def test_rest_requested_outputs_and_versioned_path(server, trained_home):
    version = trained_home.result["version"]
    body = {
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}],
        "outputs": [{"name": "probabilities"}],
    }
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/versions/{version}/infer", json=body)
    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities"]
    assert response.json()["model_version"] == version


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (
            {
                "inputs": [
                    {"name": "features", "shape": [1, 3], "datatype": "FP32", "data": ROW[:3]}
                ]
            },
            400,
            "shape",
        ),
        (
            {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "BYTES", "data": ROW}]},
            400,
            "datatype",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "features",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "data": [1, 2, "x", 4],
                    }
                ]
            },
            400,
            "numbers",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "features",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "data": [1, 2, None, 4],
                    }
                ]
            },
            400,
            "numbers",
        ),
        (
            {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": ROW}]},
            400,
            "values",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "features",
                        "shape": [2, 4],
                        "datatype": "FP32",
                        "data": [ROW, ROW[:3]],
                    }
                ]
            },
            400,
            "ragged",
        ),
        ({"inputs": []}, 400, "exactly one"),
        (
            {
                "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}],
                "outputs": [{"name": "x"}],
            },
            400,
            "unknown output",
        ),
        ([1, 2], 400, "JSON object"),
    ],
    ids=[
        "shape",
        "datatype",
        "string",
        "null",
        "size",
        "ragged",
        "no-inputs",
        "unknown-output",
        "not-object",
    ],
)
def test_rest_infer_errors_use_protocol_error_form(server, body, status, text):
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and text in response.json()["error"]


def test_rest_nan_and_non_json_rejected(server):
    url = f"{server.url}/v2/models/{MODEL}/infer"
    nan = (
        '{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",'
        ' "data": [NaN, 1, 1, 1]}]}'
    )
    assert httpx.post(url, content=nan).status_code == 400
    assert httpx.post(url, content="nope").json() == {"error": "request body is not valid JSON"}
    assert (
        httpx.post(f"{server.url}/v2/models/resnet/infer", json={"inputs": []}).status_code == 404
    )


def test_http_and_grpc_together_under_load_give_no_errors(server, stub):
    """16 clients, half HTTP half gRPC, for a bounded 6 s: every answer is a good one."""
    import threading
    import time

    deadline = time.monotonic() + 6
    counts = {"http": 0, "grpc": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def http_client() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while time.monotonic() < deadline:
                body = {
                    "sepal_length": 5.1,
                    "sepal_width": 3.5,
                    "petal_length": 1.4,
                    "petal_width": 0.2,
                }
                r = client.post("/predict", json=body)
                ok = r.status_code == 200 and r.json()["species"] == "Iris-setosa"
                with lock:
                    counts["http"] += 1
                    if not ok:
                        failures.append(f"http {r.status_code} {r.text[:100]}")

    def grpc_client() -> None:
        while time.monotonic() < deadline:
            try:
                r = stub.ModelInfer(infer_request([ROW]), timeout=10)
                ok = list(r.outputs[0].contents.bytes_contents) == [b"Iris-setosa"]
            except grpc.RpcError as e:
                ok, r = False, e
            with lock:
                counts["grpc"] += 1
                if not ok:
                    failures.append(f"grpc {r}")

    threads = [threading.Thread(target=f) for f in [http_client] * 8 + [grpc_client] * 8]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert counts["http"] > 50 and counts["grpc"] > 50, counts
    print(f"mixed load: {counts}")


# -- REST with the binary tensor data extension ---------------------------------------


def binary_body(
    rows, *, datatype: str = "FP32", size: int | None = None, extra: dict | None = None
) -> tuple[bytes, dict[str, str]]:
    """A JSON header followed by the rows' raw bytes, as tritonclient.http sends them."""
    data = np.asarray(rows, dtype="<f4" if datatype == "FP32" else "<f8").tobytes()
    header = {
        "inputs": [
            {
                "name": "features",
                "shape": list(np.shape(rows)),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data) if size is None else size},
            }
        ],
        **(extra or {}),
    }
    head = json.dumps(header).encode()
    return head + data, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def split_binary_answer(response: httpx.Response) -> tuple[dict, bytes]:
    n = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:n]), response.content[n:]


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_rest_binary_inputs_and_binary_outputs_equal_http_predict(server, test_rows, datatype):
    content, headers = binary_body(
        test_rows, datatype=datatype, extra={"parameters": {"binary_data_output": True}}
    )
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, tail = split_binary_answer(response)
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert [o["name"] for o in header["outputs"]] == ["predicted_species", "probabilities"]
    assert all("data" not in o for o in header["outputs"]) and sum(sizes) == len(tail)
    species = decode_raw_bytes(tail[: sizes[0]])
    proba = np.frombuffer(tail[sizes[0] :], dtype="<f4").reshape(-1, 3)
    http_species, http_proba = http_answers(server, test_rows)
    assert species == http_species
    np.testing.assert_allclose(proba, http_proba, atol=1e-6)


def test_rest_binary_input_with_json_outputs_and_a_per_output_choice(server):
    content, headers = binary_body(
        [ROW],
        extra={
            "outputs": [
                {"name": "predicted_species", "parameters": {"binary_data": False}},
                {"name": "probabilities", "parameters": {"binary_data": True}},
            ]
        },
    )
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    header, tail = split_binary_answer(response)
    assert header["outputs"][0]["data"] == ["Iris-setosa"]
    assert header["outputs"][1]["parameters"]["binary_data_size"] == 12 == len(tail)
    content, headers = binary_body([ROW])  # nothing asked in binary: plain JSON back
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["outputs"][0]["data"] == ["Iris-setosa"]


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda c, h: (c[:-4], h), "only 12 bytes"),
        (lambda c, h: (c + b"\0\0\0\0", h), "4 bytes of binary data"),
        (lambda c, h: (c, {**h, "Inference-Header-Content-Length": "x"}), "not a number"),
        (lambda c, h: (c, {**h, "Inference-Header-Content-Length": "9999"}), "only"),
        (lambda c, h: (c, {**h, "Inference-Header-Content-Length": "10"}), "not valid JSON"),
    ],
    ids=["truncated", "bytes-left-over", "header-not-a-number", "header-too-long", "header-short"],
)
def test_rest_binary_framing_errors_are_invalid_argument(server, change, text):
    content, headers = change(*binary_body([ROW]))
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and text in response.json()["error"]


@pytest.mark.parametrize(
    ("rows", "kwargs", "text"),
    [
        ([ROW], {"size": 8}, "needs 16"),
        ([ROW[:3]], {}, "shape"),
        ([ROW], {"datatype": "FP64", "size": 16}, "needs 32"),
        ([[float("nan"), 1, 1, 1]], {}, "NaN"),
    ],
    ids=["size-vs-shape", "wrong-shape", "fp64-size", "nan"],
)
def test_rest_binary_content_errors_are_invalid_argument(server, rows, kwargs, text):
    content, headers = binary_body(rows, **kwargs)
    if kwargs.get("size") is not None:  # send as many bytes as the size claims
        head = int(headers["Inference-Header-Content-Length"])
        content = content[: head + kwargs["size"]]
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert text in response.json()["error"]


def test_rest_binary_body_cap_still_holds(server):
    """The test server caps bodies at 200,000 bytes (IRIS_MAX_BODY_BYTES)."""
    rows = np.tile(ROW, (7000, 1))  # 112,000 bytes as FP32, 224,000 as FP64
    content, headers = binary_body(rows, datatype="FP64")
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.status_code == 413
    assert "IRIS_MAX_BODY_BYTES" in response.json()["error"]
    # Under the body cap, the batch limit (IRIS_MAX_BATCH_SIZE=4000 here) still holds, as on
    # /predict_batch; at the limit the request is answered.
    content, headers = binary_body(np.tile(ROW, (4001, 1)))
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.status_code == 400 and "IRIS_MAX_BATCH_SIZE" in response.json()["error"]
    content, headers = binary_body(np.tile(ROW, (4000, 1)))
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
