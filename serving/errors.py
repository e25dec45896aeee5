"""One error shape for every failure, a request body cap, and a bounded body read.

BentoML answers validation errors, unknown routes and internal errors each in its own
shape. :class:`GuardMiddleware` wraps the whole ASGI app (health and metrics included) and
rewrites every 4xx/5xx into :class:`serving.schemas.ErrorResponse`. Open Inference
Protocol routes (``/v2/...``) keep that protocol's own error form.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic_core import to_json
from starlette.responses import Response

from training.schema import FEATURES

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
GENERIC = {
    404: "no such route",
    405: "method not allowed on this route",
    429: "server is at its concurrency limit; retry shortly",
    500: "an unexpected error occurred; it has been logged on the server",
    503: "service is not ready",
    504: "request took longer than the server's timeout",
}
PASSTHROUGH_PREFIXES = ("/v2/",)
_MOUNT_ROOTS = ("/v2", "/feedback")
"""Mounted apps answering at their root: ``GET /v2`` (the protocol's server metadata) and
``POST /feedback`` would otherwise get a redirect to the path with a slash."""
_BODY_HEADERS = (b"content-type", b"content-length", b"content-encoding", b"transfer-encoding")
"""Headers that describe the body, which the rewriter replaces."""
JSON_ALIASES = (b"", b"application/x-www-form-urlencoded", b"text/plain")
"""Content types treated as JSON: what curl -d and naive clients send by default."""


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


class GuardMiddleware:
    """Cap and time-limit request bodies; give every error response one shape."""

    def __init__(self, app: Callable, max_body_bytes: int = 4 << 20, body_timeout_s: float = 10.0):
        self.app = app
        self._spec: bytes | None = None
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            media = _normalise_content_type(scope)
            if media != b"application/json" and not _binary_infer(scope, media):
                await self._reject(
                    scope, send, 415, "send JSON with Content-Type: application/json"
                )
                return
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await self._reject(scope, send, 413, self._too_large())
                return
            try:
                body = await asyncio.wait_for(self._read(receive), self.body_timeout_s)
            except _TooLargeError:
                await self._reject(scope, send, 413, self._too_large())
                return
            except _DisconnectedError:
                return  # the client is gone: nobody to answer, nothing to run
            except TimeoutError:
                await self._reject(
                    scope, send, 408, f"request body not received within {self.body_timeout_s:g} s"
                )
                return
            receive = _replay(body, receive)
        if scope["path"] in _MOUNT_ROOTS:  # a mounted app's root route, without a redirect
            scope["path"] += "/"
            scope["raw_path"] = scope["path"].encode()
        if scope["path"] == "/docs.json" and scope.get("method") == "GET":
            await self._openapi(scope, receive, send)
            return
        rewriter = _ErrorRewriter(send, oip=scope["path"].startswith(PASSTHROUGH_PREFIXES))
        try:
            await self.app(scope, receive, rewriter)
        except Exception:
            # Normally BentoML turns API exceptions into responses; this catches the rest
            # (mounted apps, middleware) so clients still get JSON and no traceback.
            logger.exception("Unhandled error on %s %s", scope.get("method"), scope["path"])
            if rewriter.started:
                raise
            await _send_json(send, 500, _payload(scope, 500, GENERIC[500]))

    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve BentoML's OpenAPI document completed by :func:`serving.openapi.enrich`."""
        if self._spec is None:
            from serving.openapi import enrich

            chunks: list[bytes] = []
            status = 0

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            await self.app(scope, receive, capture)
            if status != 200:
                await _send_json(send, 500, error_body(500, GENERIC[500]))
                return
            self._spec = json.dumps(enrich(json.loads(b"".join(chunks)))).encode()
        await _send_bytes(send, 200, self._spec)

    def _too_large(self) -> str:
        return f"request body exceeds {self.max_body_bytes} bytes (IRIS_MAX_BODY_BYTES)"

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _DisconnectedError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLargeError
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _reject(self, scope: Scope, send: Send, status: int, message: str) -> None:
        logger.info("%s %s -> %d: %s", scope.get("method"), scope.get("path"), status, message)
        await _send_json(send, status, _payload(scope, status, message), close=True)


def _payload(scope: Scope, status: int, message: str) -> dict:
    """Our error shape, or the Open Inference Protocol's on its routes."""
    if scope["path"].startswith(PASSTHROUGH_PREFIXES):
        return {"error": message}
    return error_body(status, message)


class _TooLargeError(Exception):
    pass


class _DisconnectedError(Exception):
    pass


def _normalise_content_type(scope: Scope) -> bytes:
    """The request's media type; JSON aliases are rewritten to application/json in place."""
    headers = list(scope.get("headers", ()))
    for i, (key, value) in enumerate(headers):
        if key == b"content-type":
            media = value.split(b";")[0].strip().lower()
            if media in JSON_ALIASES:
                headers[i] = (key, b"application/json")
                scope["headers"] = headers
                return b"application/json"
            return media
    scope["headers"] = [*headers, (b"content-type", b"application/json")]
    return b"application/json"


def _binary_infer(scope: Scope, media: bytes) -> bool:
    """An Open Inference Protocol infer call with binary tensor data (serving.oip.binary)."""
    return (
        media == b"application/octet-stream"
        and scope["path"].startswith(PASSTHROUGH_PREFIXES)
        and scope["path"].endswith("/infer")
    )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, payload: dict, *, close: bool = False) -> None:
    await _send_bytes(send, status, json.dumps(payload).encode(), close=close)


async def _send_bytes(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _ErrorRewriter:
    """Passes 1xx-3xx through untouched; buffers and rewrites 4xx/5xx bodies."""

    __slots__ = ("_body", "_oip", "_send", "_start", "started")

    def __init__(self, send: Send, *, oip: bool = False):
        self._send = send
        self._oip = oip
        self.started = False  # the app began a response (so an error can no longer be sent)
        self._start: Message | None = None
        self._body: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] < 400:
                await self._send(message)
            else:
                self._start = message
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        if self._oip:
            status, payload = rewrite_oip(self._start["status"], b"".join(self._body))
        else:
            status, payload = rewrite(self._start["status"], b"".join(self._body))
        # Keep what the framework said besides the body (Allow on a 405, as RFC 9110
        # requires; WWW-Authenticate; Retry-After); only the body's own headers change.
        extra = [
            (k, v) for k, v in self._start.get("headers", []) if k.lower() not in _BODY_HEADERS
        ]
        body = json.dumps(payload).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
