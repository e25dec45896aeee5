"""The request guard: wraps the whole ASGI app (health and metrics included).

Before the app: bodies of POST/PUT/PATCH are capped (``IRIS_MAX_BODY_BYTES``, 413), read
within ``IRIS_BODY_TIMEOUT_S`` (408), and must be JSON (415; the content types curl and
naive clients send by default count as JSON). After it: every 4xx/5xx body is rewritten to
the one error shape (:mod:`serving.errors`), and an exception that escaped the app becomes
a logged 500 with no traceback sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.errors import GENERIC, error_payload, is_oip, rewrite, rewrite_oip

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_BODY_HEADERS = (b"content-type", b"content-length", b"content-encoding", b"transfer-encoding")
"""Headers that describe the body, which the rewriter replaces."""
JSON_ALIASES = (b"", b"application/x-www-form-urlencoded", b"text/plain")
"""Content types treated as JSON: what curl -d and naive clients send by default."""


class GuardMiddleware:
    """Cap and time-limit request bodies; give every error response one shape."""

    def __init__(self, app: Callable, max_body_bytes: int = 4 << 20, body_timeout_s: float = 10.0):
        self.app = app
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
        rewriter = _ErrorRewriter(send, oip=is_oip(scope["path"]))
        try:
            await self.app(scope, receive, rewriter)
        except Exception:
            # Normally BentoML turns API exceptions into responses; this catches the rest
            # (mounted apps, middleware) so clients still get JSON and no traceback.
            logger.exception("Unhandled error on %s %s", scope.get("method"), scope["path"])
            if rewriter.started:
                raise
            await _send_json(send, 500, error_payload(scope["path"], 500, GENERIC[500]))

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
        await _send_json(send, status, error_payload(scope["path"], status, message), close=True)


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
        and is_oip(scope["path"])
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
