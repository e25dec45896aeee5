"""Model repository extension over REST on a two-worker server: unload and load reach
every worker; an unload does not outlive a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from harness.servers import Server, bento_server
from serving.oip.repository import flag_path

pytestmark = pytest.mark.integration

MODEL = "iris-classifier"
TOKEN = "repository-test-token"
BODY = {
    "inputs": [
        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}


@pytest.fixture(scope="module")
def server(trained_home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    stale = flag_path(trained_home.settings)  # as a previous run that unloaded would leave it
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.touch()
    env = {**trained_home.env, "IRIS_ADMIN_TOKEN": TOKEN}
    try:
        with bento_server(env, tmp_path_factory.mktemp("repo-logs"), workers=2) as srv:
            yield srv
    finally:
        stale.unlink(missing_ok=True)


def statuses(server: Server, n: int = 30) -> set[int]:
    """Status codes of ``n`` infer calls, each on a new connection (spread over workers)."""
    return {
        httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=BODY, timeout=10).status_code
        for _ in range(n)
    }


def settle(server: Server, expected: int) -> set[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = statuses(server)
        if seen == {expected}:
            return seen
    return seen


def test_an_unload_left_by_a_previous_run_is_forgotten_at_start(server, trained_home):
    assert not flag_path(trained_home.settings).exists()
    assert statuses(server) == {200}
    index = httpx.post(f"{server.url}/v2/repository/index").json()
    assert index[0]["state"] == "READY"


def test_unload_and_load_reach_every_worker(server, trained_home):
    admin = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{server.url}/v2/repository/models/{MODEL}"
    assert httpx.post(url + "/unload").status_code == 401
    assert httpx.post(url + "/unload", headers=admin).status_code == 200
    assert flag_path(trained_home.settings).exists()  # the flag every worker reads
    try:
        assert settle(server, 503) == {503}
        answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=BODY)
        assert "unloaded" in answer.json()["error"]
        assert httpx.get(f"{server.url}/v2/models/{MODEL}/ready").status_code == 503
        ready_only = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True})
        assert ready_only.json() == []
        assert httpx.get(server.url + "/readyz").status_code == 200  # the server is still up
    finally:
        assert httpx.post(url + "/load", headers=admin).status_code == 200
    assert settle(server, 200) == {200}


def test_openapi_documents_repository_and_version_routes(server):
    import schemathesis

    spec = httpx.get(server.url + "/docs.json").json()
    for path in (
        "/v2/repository/index",
        "/v2/repository/models/{model}/load",
        "/v2/repository/models/{model}/unload",
        "/v2/models/{model}/versions/{version}/infer",
    ):
        assert path in spec["paths"], path
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]
    # Binary tensor data is described in words (no JSON Schema for a JSON header followed
    # by raw bytes); binary outputs are a documented response type.
    assert "Inference-Header-Content-Length" in infer["description"]
    assert "application/octet-stream" in infer["responses"]["200"]["content"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferRequest"
    }
    assert "503" in infer["responses"]
    schema = schemathesis.openapi.from_dict(spec)  # a document schemathesis can use
    assert schema["/v2/repository/models/{model}/load"]["POST"] is not None
