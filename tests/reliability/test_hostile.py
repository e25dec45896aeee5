"""Hostile input: property-based fuzzing from our own OpenAPI document, plus crafted abuse."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from serving.schemas import ErrorResponse

FUZZ_EXAMPLES = 100
TOKEN = "hostile-token-0f3e"


@pytest.fixture(scope="module")
def hostile_server(trained_home, tmp_path_factory):
    from harness.servers import bento_server

    env = {
        **trained_home.env,
        "IRIS_ADMIN_TOKEN": TOKEN,
        "IRIS_BODY_TIMEOUT_S": "2",
        "IRIS_FOLLOW_REGISTRY": "false",
    }
    # Retrain is refused to fuzzed requests (wrong token), so nothing is ever trained here.
    with bento_server(env, tmp_path_factory.mktemp("hostile")) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(hostile_server):
    return schemathesis.openapi.from_url(hostile_server.url + "/docs.json")


FUZZED = [
    ("POST", "/predict"),
    ("POST", "/predict_batch"),
    ("POST", "/retrain"),
    ("GET", "/jobs/"),
    ("GET", "/jobs/{job_id}"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/ready"),
    ("POST", "/v2/models/{model}/infer"),
]
TRIED: dict[str, int] = {}
STATUSES: dict[str, dict[int, int]] = {}


@pytest.mark.parametrize(("method", "path"), FUZZED, ids=[f"{m} {p}" for m, p in FUZZED])
def test_fuzz_no_5xx_and_documented_responses(api_schema, method, path, record_property):
    """Generated valid and invalid requests: never a 5xx, always a documented answer.

    (schemathesis' pytest plugin does not run under pytest 9, so hypothesis drives the
    operation's strategy directly.)
    """
    operation = api_schema[path][method]
    label = f"{method} {path}"

    strategy = operation.as_strategy(
        generation_mode=GenerationMode.POSITIVE
    ) | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)

    @given(case=strategy)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        response = case.call(timeout=30)
        TRIED[label] = TRIED.get(label, 0) + 1
        codes = STATUSES.setdefault(label, {})
        codes[response.status_code] = codes.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text[:300])
        case.validate_response(response)
        if response.status_code >= 400 and not path.startswith("/v2"):
            ErrorResponse.model_validate(response.json())
            assert "Traceback" not in response.text and "/home/" not in response.text

    fuzz()
    assert TRIED[label] >= 10
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(STATUSES[label].items()))
    record_property(
        "reliability", f"fuzzed {label}: {TRIED[label]} requests, no 5xx (statuses {statuses})"
    )


def test_100_mb_body_is_refused_without_reading_it(hostile_server, record_property):
    started = time.monotonic()
    body = b'{"sepal_length": ' + b"1" * (100 * 1024 * 1024) + b"}"
    try:
        response = httpx.post(hostile_server.url + "/predict", content=body, timeout=60)
        assert response.status_code == 413
        assert ErrorResponse.model_validate(response.json()).error.code == "payload_too_large"
        outcome = "413 payload_too_large"
    except httpx.WriteError:
        # the server answered 413 and closed before we finished sending: also a refusal
        outcome = "connection closed mid-upload"
    took = time.monotonic() - started
    assert took < 60
    assert httpx.get(hostile_server.url + "/readyz").status_code == 200
    record_property("reliability", f"100 MB body: {outcome} after {took:.2f} s, server ready")


def test_deeply_nested_json(hostile_server, record_property):
    body = "[" * 100_000 + "]" * 100_000
    response = httpx.post(hostile_server.url + "/predict", content=body, timeout=30)
    assert 400 <= response.status_code < 500
    deep = response.status_code
    ErrorResponse.model_validate(response.json())
    nested = {
        "sepal_length": json.loads("[" * 50 + "1" + "]" * 50),
        "sepal_width": 1,
        "petal_length": 1,
        "petal_width": 1,
    }
    response = httpx.post(hostile_server.url + "/predict", json=nested, timeout=30)
    assert response.status_code == 422
    record_property(
        "reliability", f"100k-deep JSON nesting: {deep}; a nested field: {response.status_code}"
    )


def test_million_row_batch_is_refused(hostile_server, record_property):
    rows = "[5.1,3.5,1.4,0.2]," * 1_000_000
    body = '{"instances": [' + rows[:-1] + "]}"
    started = time.monotonic()
    response = httpx.post(hostile_server.url + "/predict_batch", content=body, timeout=60)
    took = time.monotonic() - started
    assert response.status_code == 413
    assert httpx.get(hostile_server.url + "/readyz").status_code == 200
    record_property("reliability", f"1M-row batch: {response.status_code} after {took:.2f} s")


def test_slow_loris_partial_body_is_cut_off(hostile_server, record_property):
    """Headers promise 1000 bytes, 10 arrive: the server answers 408 within its body timeout."""
    url = urlparse(hostile_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"sepal_le'
        )
        started = time.monotonic()
        reply = sock.recv(4096).decode(errors="replace")
        waited = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert waited < 10
    # and the server still answers everyone else
    ok = httpx.post(
        hostile_server.url + "/predict",
        json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    )
    assert ok.status_code == 200
    record_property(
        "reliability", f"slow loris (10 of 1000 bytes): {reply[9:12]} after {waited:.1f} s"
    )


def test_admin_endpoints_refuse_every_wrong_token_and_never_log_it(hostile_server, record_property):
    attempts = [
        None,
        "",
        "Bearer",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"bearer  {TOKEN[:4]}",
        f"Basic {TOKEN}",
        TOKEN,
    ]
    for header in attempts:
        headers = {} if header is None else {"authorization": header}
        for method, path in (("POST", "/retrain"), ("GET", "/jobs/"), ("GET", "/jobs/abc")):
            response = httpx.request(method, hostile_server.url + path, headers=headers)
            assert response.status_code == 401, (header, path, response.text)
            assert TOKEN not in response.text
            assert "Traceback" not in response.text and "/home/" not in response.text
    assert TOKEN not in hostile_server.log()
    assert TOKEN[:8] not in hostile_server.log()
    tried = len(attempts) * 3
    record_property("reliability", f"{tried} wrong admin tokens: all 401, none echoed or logged")
