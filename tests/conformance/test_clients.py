"""tritonclient (HTTP and gRPC) and KServe's clients, with their defaults, against our server.

Every answer is compared with our own ``/predict_batch`` for the same rows; every error
case must come back as the protocol's INVALID_ARGUMENT / NOT_FOUND with a message that
names the problem. Run just this suite with ``make conformance``.
"""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conformance.conftest import ADMIN_TOKEN, run_client
from training.schema import FEATURES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "iris-classifier"
INVALID = {"nan": "NaN", "wrong_shape": "shape", "wrong_datatype": "datatype"}


@pytest.fixture(scope="module")
def rows(trained_home) -> list[list[float]]:
    return pd.read_csv(trained_home.test_csv)[list(FEATURES)].to_numpy().tolist()


@pytest.fixture(scope="module")
def expected(oip_server, rows) -> tuple[list[str], np.ndarray]:
    body = httpx.post(oip_server.url + "/predict_batch", json={"instances": rows}).json()
    species = [p["species"] for p in body["predictions"]]
    proba = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    return species, proba


@pytest.fixture(scope="module")
def cfg(oip_server, trained_home, rows) -> dict:
    return {
        "http": oip_server.url.removeprefix("http://"),
        "grpc": oip_server.grpc_target,
        "model": MODEL,
        "version": trained_home.version,
        "rows": rows,
    }


def check_infer(answers: dict, expected, version: str | None) -> None:
    """``version`` None: the client does not report it (KServe's REST client drops it)."""
    species, proba = expected
    assert answers, "no inference results"
    for key, answer in answers.items():
        n = len(answer.get("species") or answer.get("proba"))
        if version is not None:
            assert answer["model_version"] == version, key
        if key.startswith("only-"):
            assert answer["outputs"] == [key.removeprefix("only-").rsplit("-", 1)[0]], key
        else:
            assert answer["outputs"] == ["predicted_species", "probabilities"], key
        if "species" in answer:
            assert answer["species"] == species[:n], key
        if "proba" in answer:
            np.testing.assert_allclose(
                np.array(answer["proba"]).reshape(-1, 3), proba[:n], atol=1e-6, err_msg=key
            )


def check_errors(errors: dict, invalid: str, not_found: str, *, full: bool = True) -> None:
    """Every error case the client script reports. ``full``: the client can also ask for a
    version and an output by name (tritonclient), so those cases must be there too."""
    for name, word in INVALID.items():
        assert errors[name]["code"] == invalid, (name, errors[name])
        assert word in errors[name]["message"], (name, errors[name])
    assert errors["unknown_model"]["code"] == not_found, errors["unknown_model"]
    if full:
        assert errors["unknown_version"]["code"] == not_found, errors["unknown_version"]
        assert errors["unknown_output"]["code"] == invalid
        assert "logits" in errors["unknown_output"]["message"]


def check_metadata(result: dict, version: str) -> None:
    assert result["live"] is True and result["ready"] is True
    assert result["model_ready"] is True and result["version_ready"] is True
    assert result["server_metadata"]["name"] == MODEL
    for key in ("model_metadata", "version_metadata"):
        meta = result[key]
        assert meta["name"] == MODEL and meta["versions"] == [version]
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("features", "FP32")]
        assert [t["name"] for t in meta["outputs"]] == ["predicted_species", "probabilities"]


def test_tritonclient_http_defaults_binary_and_json(client_python, cfg, expected, tmp_path):
    result = run_client(client_python, "triton_http.py", cfg, tmp_path)
    check_metadata(result, cfg["version"])
    assert set(result["infer"]) >= {"FP32-binary", "FP32-json", "FP64-binary", "FP64-json"}
    check_infer(result["infer"], expected, cfg["version"])
    check_errors(result["errors"], "400", "404")


def test_tritonclient_grpc(client_python, cfg, expected, tmp_path):
    result = run_client(client_python, "triton_grpc.py", cfg, tmp_path)
    check_metadata(result, cfg["version"])
    assert set(result["infer"]) >= {"FP32-raw", "FP64-raw", "version"}
    check_infer(result["infer"], expected, cfg["version"])
    check_errors(result["errors"], "INVALID_ARGUMENT", "NOT_FOUND")


def test_kserve_rest_and_grpc_clients(client_python, cfg, expected, tmp_path):
    result = run_client(client_python, "kserve_clients.py", cfg, tmp_path)
    for protocol, invalid, not_found in (
        ("rest", "400", "404"),
        ("grpc", "INVALID_ARGUMENT", "NOT_FOUND"),
    ):
        answers = result[protocol]
        assert answers["live"] and answers["ready"] and answers["model_ready"], protocol
        # KServe's InferResponse.from_bytes (its REST path) leaves model_version unset.
        version = None if protocol == "rest" else cfg["version"]
        check_infer(answers["infer"], expected, version)
        # KServe's clients take no model version or output names in these calls.
        check_errors(answers["errors"], invalid, not_found, full=False)


def test_grpc_health_and_reflection_from_a_second_client(client_python, cfg, expected, tmp_path):
    """grpcio-health-checking's stub and grpcio-reflection's client (protobuf 6, own venv)."""
    result = run_client(client_python, "grpc_ops.py", cfg, tmp_path)
    assert result["health"] == {
        "": "SERVING",
        "inference.GRPCInferenceService": "SERVING",
        "no.such.Service": "NOT_FOUND",
    }
    reflection = result["reflection"]
    assert {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(reflection["services"])
    assert {"ModelInfer", "ModelMetadata", "ServerLive"} <= set(reflection["methods"])
    assert reflection["species"] == expected[0][:1]


def test_model_repository_extension_through_tritonclient(client_python, cfg, tmp_path):
    """Unload/load change what every client sees; both need the admin token. Runs last in
    this module because it changes the shared server (and leaves the model loaded)."""
    result = run_client(
        client_python, "triton_repository.py", {**cfg, "token": ADMIN_TOKEN}, tmp_path
    )
    ready = [{"name": MODEL, "version": cfg["version"], "state": "READY", "reason": ""}]
    for protocol, codes in (
        ("http", {"auth": "401", "missing": "404", "unavailable": "503"}),
        ("grpc", {"auth": "UNAUTHENTICATED", "missing": "NOT_FOUND", "unavailable": "UNAVAILABLE"}),
    ):
        r = result[protocol]
        assert r["index"] == ready, protocol
        assert r["unload_without_token"]["code"] == codes["auth"], r
        assert r["unload_wrong_token"]["code"] == codes["auth"], r
        assert r["unload_unknown_model"]["code"] == codes["missing"], r
        after = r["after_unload"]
        assert after["model_ready"] is False and after["server_ready"] is True, after
        assert after["index"] == [{**ready[0], "state": "UNAVAILABLE", "reason": "unloaded"}]
        assert after["infer"]["code"] == codes["unavailable"], after
        assert "unloaded" in after["infer"]["message"]
        assert r["after_load"] == {
            "model_ready": True,
            "index": ready,
            "infer": {"code": "OK", "message": ""},
        }, protocol
