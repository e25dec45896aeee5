from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from serving.auth import check_bearer
from serving.errors import describe_loc, rewrite
from serving.schemas import ErrorResponse

TOKEN = SecretStr("s3cret-token")


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer wrong", 401),
        ("Basic s3cret-token", 401),
        ("s3cret-token", 401),
    ],
)
def test_wrong_or_missing_token_is_refused(header, status):
    denied = check_bearer(header, TOKEN)
    assert denied is not None and denied.status == status
    assert "s3cret" not in denied.message


def test_right_token_passes_and_no_token_configured_disables():
    assert check_bearer("Bearer s3cret-token", TOKEN) is None
    assert check_bearer("bearer s3cret-token", TOKEN) is None
    assert check_bearer("Bearer s3cret-token", None).status == 403
    assert check_bearer("Bearer ", SecretStr("")).status == 403


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("sepal_length",), ("sepal_length", None, "sepal_length")),
        (("records", 3, "petal_width"), ("petal_width", 3, "records[3].petal_width")),
        (("instances", 7, 2), ("petal_length", 7, "instances[7][2]")),
        ((), (None, None, "")),
    ],
)
def test_error_locations_name_field_and_row(loc, expected):
    assert describe_loc(loc) == expected


def test_rewrite_turns_every_foreign_error_into_our_shape():
    bento_validation = {
        "error": "1 validation error",
        "detail": [{"type": "missing", "loc": ["petal_width"], "msg": "Field required"}],
    }
    status, body = rewrite(400, json.dumps(bento_validation).encode())
    assert status == 422
    assert ErrorResponse.model_validate(body).error.details[0].field == "petal_width"
    status, body = rewrite(
        500, b'{"error": "An unexpected error has occurred, please check the server log."}'
    )
    assert status == 500 and body["error"]["code"] == "internal_error"
    status, body = rewrite(404, b'{"detail": "Not Found"}')
    assert status == 404 and ErrorResponse.model_validate(body).error.code == "not_found"
    status, body = rewrite(503, b"Runners are not ready.")
    assert status == 503 and ErrorResponse.model_validate(body)
    status, body = rewrite(429, b"")
    assert status == 429 and body["error"]["code"] == "too_many_requests"
