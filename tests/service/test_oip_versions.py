"""``/versions/{v}`` serves that registered version, not only the champion."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest

from harness.cli import run_pipeline
from harness.data_files import read_table, with_training_features_rotated, write_table
from harness.homes import TrainedHome, train_home
from harness.servers import Server, bento_server
from harness.state import download_version
from serving.oip.proto import grpc_predict_v2_pb2 as pb
from serving.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from training.model_io import load_classifier
from training.schema import FEATURES
from training.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "iris-classifier"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> TrainedHome:
    """v1 @champion on the shipped data, v2 trained on rotated features (not promoted)."""
    home = tmp_path_factory.mktemp("versions")
    trained = train_home(home, home / "bentoml")
    settings = Settings(home=home)
    worse = write_table(
        home / "inputs" / "rotated.csv",
        with_training_features_rotated(
            read_table(), seed=settings.seed, test_size=settings.test_size
        ),
    )
    second = run_pipeline(trained.env, "--raw", str(worse))
    assert second["version"] == "2" and not second["promoted"], second
    return trained


@pytest.fixture(scope="module")
def server(two_versions: TrainedHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**two_versions.env, "IRIS_LOADED_VERSIONS": "1"}
    with bento_server(env, tmp_path_factory.mktemp("versions-logs")) as srv:
        yield srv


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    """Flowers across the whole measured range, where two models are likely to differ."""
    axes = [np.linspace(0.5, 7.5, 5)] * len(FEATURES)
    return np.stack(np.meshgrid(*axes), axis=-1).reshape(-1, len(FEATURES))


def species_of(two_versions: TrainedHome, version: str, rows: np.ndarray, tmp: Path) -> list:
    """What the registered version itself says, loaded in this process."""
    path = download_version(two_versions.tracking_uri, MODEL, version, tmp / f"v{version}")
    classifier = load_classifier(path)
    proba = classifier.estimator.predict_proba(pd.DataFrame(rows, columns=classifier.feature_names))
    return [classifier.class_names[i] for i in proba.argmax(axis=1)]


def rest_infer(server: Server, rows: np.ndarray, version: str | None) -> httpx.Response:
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {
        "inputs": [
            {
                "name": "features",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "data": rows.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "predicted_species"}],
    }
    return httpx.post(server.url + path, json=body, timeout=60)


def test_each_version_route_answers_with_that_version(server, two_versions, grid, tmp_path):
    v1, v2 = (species_of(two_versions, v, grid, tmp_path) for v in ("1", "2"))
    assert v1 != v2, "the two versions must disagree somewhere for this test to mean anything"
    champion = rest_infer(server, grid, None).json()
    assert champion["model_version"] == "1"
    for version, expected in (("2", v2), ("1", v1)):
        answer = rest_infer(server, grid, version)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version
        assert answer.json()["outputs"][0]["data"] == expected, version
    meta = httpx.get(f"{server.url}/v2/models/{MODEL}/versions/2").json()
    assert meta["versions"] == ["2"]
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/versions/2/ready").json()["ready"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=MODEL, model_version="2")
        tensor = request.inputs.add(name="features", datatype="FP64", shape=list(grid.shape))
        tensor.contents.fp64_contents.extend(grid.ravel().tolist())
        response = stub.ModelInfer(request, timeout=60)
    assert response.model_version == "2"
    assert [b.decode() for b in response.outputs[0].contents.bytes_contents] == v2
    assert "Loaded version 2 on request" in server.log()


@pytest.mark.parametrize("version", ["3", "0", "abc", "1.5"])
def test_unknown_versions_are_not_found(server, grid, version):
    answer = rest_infer(server, grid[:1], version)
    assert answer.status_code == 404, answer.text
    assert "no version" in answer.json()["error"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version=version), timeout=60)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_missing_version_is_asked_once_per_minute_not_per_request(server, grid):
    for _ in range(5):
        assert rest_infer(server, grid[:1], "7").status_code == 404
    assert server.log().count("Version 7 not loaded") == 1
