"""How our BentoML 1.4 workers serve, applied when a service module is imported.

:func:`configure_server` is called by ``service.py`` and by the benchmark's no-op peer
(which must run under the same settings to stay a fair ceiling). It does two things.

Read by libuv (uvloop) when a worker starts listening, ``UV_TCP_SINGLE_ACCEPT=1`` makes a
worker accept one connection at a time, so that the workers sharing BentoML's listening
socket split a burst of new connections instead of the first one awake taking them all
(see benchmarks/README.md).

BentoML's traffic-metrics middleware labels every request with its raw path, so
each ``/jobs/<uuid>`` and each random 404 path made a new time series. It now sees the
route template (:func:`serving.routing.endpoint_label`) while the routes behind it still
see the real path.

``TimeoutMiddleware`` (bentoml/_internal/server/http/traffic.py) arms
``loop.call_later(timeout, ...)`` for every request and never cancels it. The timer
handle keeps the request's context alive (its OpenTelemetry span, futures, locks: about
20 objects) until it fires, ``traffic.timeout`` seconds later. At 2,000 requests/s and a
30 s timeout that is over a million live objects per worker: every full garbage
collection walks them, which showed up as 100-300 ms stalls (p99, and 10,000-row batches
taking 280 ms instead of 30 ms right after a load test).

The replacement below is BentoML's own method plus ``timer.cancel()`` when the request
ends. It is applied once, and only to the class it was written for.
"""

from __future__ import annotations

import asyncio
import logging
import os

logger = logging.getLogger(__name__)


def configure_server() -> None:
    """One-accept-at-a-time for uvloop, request timers cancelled, bounded endpoint labels."""
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    cancel_request_timers()
    bound_endpoint_labels()


_REAL_SCOPE = "iris.real_scope"


def bound_endpoint_labels() -> bool:
    """Make BentoML's HTTP metrics label requests by route template; True if applied.

    New-style services use ``RunnerTrafficMetricsMiddleware``, legacy ones
    ``HTTPTrafficMetricsMiddleware``; both read ``scope["path"]`` once for their labels
    and then call the app, so both are wrapped the same way.
    """
    from bentoml._internal.server.http import instruments

    return all(
        _bound_labels(getattr(instruments, name))
        for name in ("RunnerTrafficMetricsMiddleware", "HTTPTrafficMetricsMiddleware")
    )


def _bound_labels(cls: type) -> bool:
    from serving.routing import endpoint_label

    if getattr(cls.__call__, "_iris_fixed", False):
        return True
    if not hasattr(cls, "_setup") or "app" not in cls.__init__.__code__.co_varnames:
        logger.warning("BentoML's %s changed; endpoint labels unbound", cls.__name__)
        return False
    original_init, original_call = cls.__init__, cls.__call__

    def init(self, app, *args, **kwargs) -> None:
        async def real_path_app(scope, receive, send) -> None:
            # The routes behind the middleware get the request's own scope back.
            await app(scope.get(_REAL_SCOPE, scope), receive, send)

        original_init(self, real_path_app, *args, **kwargs)

    async def call(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "path": endpoint_label(scope["path"]), _REAL_SCOPE: scope}
        await original_call(self, scope, receive, send)

    call._iris_fixed = True  # type: ignore[attr-defined]
    cls.__init__, cls.__call__ = init, call
    return True


def cancel_request_timers() -> bool:
    """Patch ``TimeoutMiddleware.__call__``; True if patched now or already."""
    from bentoml._internal.server.http import traffic
    from starlette.responses import JSONResponse

    cls = traffic.TimeoutMiddleware
    if getattr(cls.__call__, "_iris_fixed", False):
        return True
    if not hasattr(cls, "_set_timer_out"):  # upstream changed: do not guess
        logger.warning("BentoML's TimeoutMiddleware changed; request-timer fix not applied")
        return False

    async def call(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                response = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504,
                )
                await response(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()  # the fix: release the request's objects now, not in `timeout` s

    call._iris_fixed = True  # type: ignore[attr-defined]
    cls.__call__ = call
    return True
