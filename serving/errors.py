"""The one error shape (:class:`serving.schemas.ErrorResponse`) and how any framework error
becomes it.

BentoML and Starlette answer validation errors, unknown routes and internal errors each in
their own shape; :func:`rewrite` maps each to ours (``serving.guard`` applies it to every
4xx/5xx). Open Inference Protocol routes (``/v2``) keep that protocol's ``{"error": ...}``
form (:func:`rewrite_oip`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json
from starlette.responses import Response

from training.schema import FEATURES


@dataclass(frozen=True)
class Status:
    """What one HTTP error status means here.

    Attributes:
        code: The stable machine-readable ``error.code`` of the error shape.
        meaning: When the service answers with it (the OpenAPI document's description).
        generic: The message sent when the framework produced the error and said nothing
            more useful (empty: the answer always carries its own message).
    """

    code: str
    meaning: str
    generic: str = ""


STATUSES: dict[int, Status] = {
    400: Status("bad_request", "The body is not valid JSON"),
    401: Status("unauthorized", "Missing or wrong bearer token"),
    403: Status("forbidden", "Disabled on this server (its token is not configured)"),
    404: Status("not_found", "No such route, job or prediction", "no such route"),
    405: Status(
        "method_not_allowed",
        "Method not allowed on this route (see the Allow header)",
        "method not allowed on this route",
    ),
    408: Status("request_timeout", "The request body did not arrive in time"),
    409: Status("conflict", "A retrain is already running"),
    413: Status("payload_too_large", "Body or batch too large"),
    415: Status("unsupported_media_type", "The body is not JSON"),
    422: Status("validation_error", "Invalid request: the message names the field (and row)"),
    429: Status(
        "too_many_requests",
        "Too many concurrent requests",
        "server is at its concurrency limit; retry shortly",
    ),
    500: Status(
        "internal_error",
        "Internal error (logged on the server; no details sent)",
        "an unexpected error occurred; it has been logged on the server",
    ),
    503: Status("unavailable", "Not ready, or a database it needs is down", "service is not ready"),
    504: Status("timeout", "Request timed out", "request took longer than the server's timeout"),
}
"""Every error status the service answers with: one table for the error shape and the
OpenAPI document (:mod:`serving.openapi`)."""
CODES = {status: s.code for status, s in STATUSES.items()}
"""Status -> ``error.code`` (derived from :data:`STATUSES`)."""
GENERIC = {status: s.generic for status, s in STATUSES.items() if s.generic}
"""Status -> message for framework errors that carry none of their own."""
OIP_ROOT = "/v2"
"""Where the Open Inference Protocol is mounted; its routes keep the protocol's error form."""


def is_oip(path: str) -> bool:
    """True for the Open Inference Protocol's routes (``/v2`` and below)."""
    return path == OIP_ROOT or path.startswith(OIP_ROOT + "/")


def error_body(
    status: int, message: str, details: list[dict] | None = None, code: str = ""
) -> dict:
    """The documented error shape."""
    return {
        "error": {
            "code": code or CODES.get(status, "error"),
            "message": message,
            "details": details or [],
        }
    }


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised by pydantic-core (several times faster than json.dumps)."""
    return Response(
        to_json(payload), status_code=status, media_type="application/json", headers=headers
    )


def json_error(status: int, message: str, details: list[dict] | None = None, code: str = ""):
    return json_response(error_body(status, message, details, code), status)


RETRY_AFTER_S = 5
"""What a 503 for a database that failed or did not answer tells the client to wait
(``Retry-After``) before sending again: the connect timeout it would meet anyway."""


def database_unavailable(message: str, code: str = "") -> Response:
    """503 for a database that failed or did not answer, with ``Retry-After``; serving
    itself is fine."""
    response = json_error(503, message, code=code)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def describe_loc(loc: list | tuple) -> tuple[str | None, int | None, str]:
    """Turn a pydantic error location into (field, row, readable path)."""
    parts = [p for p in loc if p not in ("body", "root")]
    row = next((p for p in parts if isinstance(p, int)), None)
    field = None
    if parts and parts[0] == "instances" and len(parts) >= 3 and isinstance(parts[2], int):
        field = FEATURES[parts[2]] if 0 <= parts[2] < len(FEATURES) else None
    elif parts and isinstance(parts[-1], str):
        field = parts[-1]
    elif parts and isinstance(parts[0], str):
        field = parts[0]
    path = ""
    for p in parts:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    return field, row, path


def validation_details(errors: list[dict]) -> list[dict]:
    details = []
    for err in errors:
        field, row, path = describe_loc(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not part of the request schema)"
        elif err.get("type") == "missing":
            msg = "field required"
        elif err.get("type") == "json_invalid":
            msg = "body is not valid JSON"
            field = row = None
        details.append({"field": field, "row": row, "message": f"{path}: {msg}" if path else msg})
    return details


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def rewrite(status: int, body: bytes) -> tuple[int, dict]:
    """Map whatever BentoML or Starlette produced to our shape (and a 4xx for bad input)."""
    data = _json_or_none(body)
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and "code" in data["error"]:
        return status, data  # already ours
    if status == 400 and isinstance(data, dict) and isinstance(data.get("detail"), list):
        details = validation_details(data["detail"])
        if any(d["message"] == "body is not valid JSON" for d in details):
            return 400, error_body(400, "body is not valid JSON", code="invalid_json")
        summary = details[0]["message"] if details else "invalid request"
        if len(details) > 1:
            summary += f" (and {len(details) - 1} more)"
        return 422, error_body(422, summary, details)
    if isinstance(data, list) and data and isinstance(data[0], dict) and status < 500:
        return status, error_body(status, str(data[0].get("error", "bad request")))
    return status, error_body(status, GENERIC.get(status, "request failed"))


def rewrite_oip(status: int, body: bytes) -> tuple[int, dict]:
    """Open Inference Protocol routes keep the protocol's ``{"error": "..."}`` form."""
    data = _json_or_none(body)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return status, data
    return status, {"error": GENERIC.get(status, "request failed")}


def error_payload(path: str, status: int, message: str) -> dict:
    """Our error shape, or the Open Inference Protocol's on its routes."""
    if is_oip(path):
        return {"error": message}
    return error_body(status, message)
