"""Every malformed request gets a 4xx in the one documented error shape, naming the field."""

from __future__ import annotations

import json

import httpx
import pytest

from serving.schemas import ErrorResponse

pytestmark = pytest.mark.integration

GOOD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def with_(**changes) -> str:
    return json.dumps({**GOOD, **changes})


def without(field: str) -> str:
    return json.dumps({k: v for k, v in GOOD.items() if k != field})


# (case id, path, raw body, expected status, text the message must contain, field named)
CASES = [
    ("missing", "/predict", without("petal_width"), 422, "petal_width", "petal_width"),
    ("extra", "/predict", with_(color="blue"), 422, "unknown field", "color"),
    ("non-numeric", "/predict", with_(sepal_width="wide"), 422, "sepal_width", "sepal_width"),
    ("numeric-string", "/predict", with_(sepal_width="3.5"), 422, "sepal_width", "sepal_width"),
    ("bool", "/predict", with_(petal_length=True), 422, "petal_length", "petal_length"),
    ("null", "/predict", with_(petal_length=None), 422, "petal_length", "petal_length"),
    ("list", "/predict", with_(petal_length=[1.4]), 422, "petal_length", "petal_length"),
    ("nan", "/predict", with_(sepal_length=float("nan")), 422, "finite", "sepal_length"),
    ("infinity", "/predict", with_(sepal_length=float("inf")), 422, "finite", "sepal_length"),
    ("negative", "/predict", with_(petal_width=-0.2), 422, "greater than 0", "petal_width"),
    ("zero", "/predict", with_(petal_width=0), 422, "greater than 0", "petal_width"),
    ("huge", "/predict", with_(sepal_length=1e9), 422, "less than or equal to 50", "sepal_length"),
    ("array-body", "/predict", "[5.1, 3.5, 1.4, 0.2]", 422, "object", None),
    ("non-json", "/predict", "sepal_length=5.1", 400, "not valid JSON", None),
    ("truncated-json", "/predict", with_()[:-5], 400, "not valid JSON", None),
    ("empty-body", "/predict", "", 422, "field required", "sepal_length"),
    ("empty-batch", "/predict_batch", '{"records": []}', 422, "at least 1 item", "records"),
    ("empty-instances", "/predict_batch", '{"instances": []}', 422, "at least 1 item", "instances"),
    ("null-records", "/predict_batch", '{"records": null}', 422, "valid array", "records"),
    ("no-form", "/predict_batch", "{}", 422, "exactly one", None),
    (
        "both-forms",
        "/predict_batch",
        json.dumps({"records": [GOOD], "instances": [[1, 2, 3, 4]]}),
        422,
        "exactly one",
        None,
    ),
    ("short-row", "/predict_batch", '{"instances": [[5.1, 3.5, 1.4]]}', 422, "instances[0]", None),
    (
        "bad-row-3",
        "/predict_batch",
        json.dumps({"records": [GOOD] * 3 + [{**GOOD, "petal_width": "x"}]}),
        422,
        "records[3].petal_width",
        "petal_width",
    ),
    (
        "oversized-batch",
        "/predict_batch",
        json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]] * 4001}),
        413,
        "limit is 4000",
        None,
    ),
    (
        "oversized-body",
        "/predict",
        json.dumps({**GOOD, "pad": "x" * 300_000}),
        413,
        "exceeds 200000 bytes",
        None,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "text", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_input_gets_documented_4xx(server, path, body, status, text, field):
    response = httpx.post(
        server.url + path, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = ErrorResponse.model_validate(response.json()).error
    assert text in error.message + " ".join(d.message for d in error.details)
    if field is not None:
        assert field in {d.field for d in error.details} | {error.message.split(":")[0]}
    assert "Traceback" not in response.text and "/work" not in response.text


def test_bad_row_is_named_with_its_index(server):
    records = [GOOD, GOOD, {**GOOD, "sepal_length": -1}]
    error = httpx.post(server.url + "/predict_batch", json={"records": records}).json()["error"]
    assert error["details"][0] == {
        "field": "sepal_length",
        "row": 2,
        "message": "records[2].sepal_length: Input should be greater than 0",
    }


def test_unsupported_media_type(server):
    response = httpx.post(
        server.url + "/predict",
        content=b"--x--",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 415
    ErrorResponse.model_validate(response.json())


def test_curl_default_content_type_is_accepted_as_json(server):
    response = httpx.post(
        server.url + "/predict",
        content=json.dumps(GOOD),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text


def test_unknown_route_and_wrong_method(server):
    for response, status in (
        (httpx.post(server.url + "/nope", json={}), 404),
        (httpx.get(server.url + "/predict"), 405),
    ):
        assert response.status_code == status
        ErrorResponse.model_validate(response.json())


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/predict", {"POST"}),
        ("GET", "/predict_batch", {"POST"}),
        ("DELETE", "/retrain", {"POST"}),
        ("PUT", "/v2/models/iris-classifier/infer", {"POST"}),
        ("POST", "/v2/health/live", {"GET"}),
    ],
)
def test_405_says_which_methods_are_allowed(server, method, path, allowed):
    """RFC 9110: a 405 carries Allow; rewriting the body into our shape must keep it."""
    response = httpx.request(method, server.url + path, json={} if method != "GET" else None)
    assert response.status_code == 405
    assert allowed <= {m.strip() for m in response.headers["allow"].split(",")}, response.headers
    assert response.headers["content-type"] == "application/json"


def test_retrain_is_disabled_without_a_token(server):
    response = httpx.post(server.url + "/retrain", headers={"authorization": "Bearer anything"})
    assert response.status_code == 403
    assert "IRIS_ADMIN_TOKEN" in ErrorResponse.model_validate(response.json()).error.message
