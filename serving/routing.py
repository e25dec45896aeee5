"""Routing concerns BentoML's router cannot express: two small ASGI middlewares, and the
route template of any path (the ``endpoint`` label of metrics).

- :class:`MountRoots`: an app mounted at ``/v2`` or ``/feedback`` answers at that path
  itself (``GET /v2`` is the protocol's server metadata, ``POST /feedback`` the feedback
  API) instead of the router redirecting to the path with a slash.
- :class:`OpenAPIDocument`: ``GET /docs.json`` serves BentoML's document completed by
  :func:`serving.openapi.enrich`, built once per worker.
- :func:`endpoint_label`: the route a path belongs to, so metrics labels stay bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.responses import Response

from serving.errors import GENERIC, json_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class MountRoots:
    """Route ``<root>`` to the app mounted there, as ``<root>/``, without a redirect."""

    def __init__(self, app: App, roots: Iterable[str] = ()):
        self.app = app
        self.roots = frozenset(roots)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.roots:
            scope = {**scope, "path": scope["path"] + "/"}
            scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)


class OpenAPIDocument:
    """Serve ``GET /docs.json`` as BentoML generates it, completed by ``enrich``."""

    PATH = "/docs.json"

    def __init__(self, app: App):
        self.app = app
        self._document: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._document is None:
            generated = await self._generated(scope, receive)
            if generated is None:
                await json_error(500, GENERIC[500])(scope, receive, send)
                return
            from serving.openapi import enrich

            self._document = json.dumps(enrich(generated)).encode()
        response = Response(self._document, media_type="application/json")
        await response(scope, receive, send)

    async def _generated(self, scope: Scope, receive: Receive) -> dict | None:
        """BentoML's own document, or None if it could not produce one."""
        chunks: list[bytes] = []
        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        return json.loads(b"".join(chunks)) if status == 200 else None


_ROUTE_TEMPLATES = (
    (re.compile(r"^/jobs/[^/]+$"), "/jobs/{job_id}"),
    (re.compile(r"^/v2/models/[^/]+$"), "/v2/models/{model_name}"),
    (re.compile(r"^/v2/models/[^/]+/(ready|infer)$"), "/v2/models/{model_name}/\\1"),
    (re.compile(r"^/v2/models/[^/]+/versions/[^/]+$"), "/v2/models/{model_name}/versions/{v}"),
    (
        re.compile(r"^/v2/models/[^/]+/versions/[^/]+/(ready|infer)$"),
        "/v2/models/{model_name}/versions/{v}/\\1",
    ),
    (
        re.compile(r"^/v2/repository/models/[^/]+/(load|unload)$"),
        "/v2/repository/models/{model_name}/\\1",
    ),
    (re.compile(r"^/static_content/.+$"), "/static_content/{file}"),
)
_ROUTES = frozenset(
    {
        "/",
        "/predict",
        "/predict_batch",
        "/retrain",
        "/feedback",
        "/feedback/",
        "/jobs",
        "/jobs/",
        "/livez",
        "/readyz",
        "/healthz",
        "/metrics",
        "/docs.json",
        "/v2",
        "/v2/",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/repository/index",
    }
)


def endpoint_label(path: str) -> str:
    """The route template a request path belongs to, for the ``endpoint`` metric label.

    Raw paths would make a new time series for every job id and every random 404 path; a
    template keeps the label set bounded. Paths of no route are all ``other``.
    """
    if path in _ROUTES:
        return path
    for pattern, template in _ROUTE_TEMPLATES:
        if pattern.match(path):
            return pattern.sub(template, path)
    return "other"
