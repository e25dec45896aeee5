"""Graceful termination: at SIGTERM, leave the load balancer first, then stop.

What BentoML 1.4 and uvicorn already do: ``bentoml serve`` (a circus arbiter) passes
SIGTERM to each worker and waits for it (``graceful_timeout`` of a day); uvicorn then
stops accepting, lets in-flight requests finish, closes idle keep-alive connections and
exits. What they do not do: tell anyone beforehand. ``/readyz`` keeps answering 200 until
the socket closes, and a balancer learns the replica is gone only from failed requests.

:func:`install` (called once per worker at startup) adds that step: at SIGTERM ``/readyz``
answers 503 at once while the worker keeps serving for ``IRIS_DRAIN_S`` seconds, long
enough for health checks to take it out of rotation; then uvicorn's own graceful shutdown
runs. A second SIGTERM skips the wait. ``IRIS_DRAIN_S=0`` (the default) only flips
``/readyz`` and shuts down as before.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from serving.errors import json_error

logger = logging.getLogger(__name__)

_draining = False


def draining() -> bool:
    """Whether this worker has received SIGTERM."""
    return _draining


def install(drain_s: float) -> None:
    """Wrap the server's SIGTERM handler (call from the worker's event loop, at startup)."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def stop(sig: int) -> None:
        if callable(previous):
            previous(sig, None)
        else:  # nobody captured SIGTERM: let its default (or ignore) apply now
            signal.signal(sig, previous)
            signal.raise_signal(sig)

    def on_sigterm(sig: int, _frame: Any) -> None:
        global _draining
        if _draining:
            stop(sig)
            return
        _draining = True
        logger.info("SIGTERM: /readyz now 503; serving %g s more, then shutting down", drain_s)
        loop.call_soon_threadsafe(loop.call_later, drain_s, stop, sig)

    signal.signal(signal.SIGTERM, on_sigterm)


class DrainMiddleware:
    """Answers ``/readyz`` with 503 once the worker is draining; passes everything else."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if _draining and scope["type"] == "http" and scope["path"] == "/readyz":
            response = json_error(503, "draining: this replica is shutting down", code="draining")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
