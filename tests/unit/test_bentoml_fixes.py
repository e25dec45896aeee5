"""BentoML's per-request timeout timer is cancelled when the request ends."""

from __future__ import annotations

import asyncio
import gc

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.bentoml_fixes import cancel_request_timers


async def _fast(request):
    return PlainTextResponse("ok")


async def _slow(request):
    await asyncio.sleep(5)
    return PlainTextResponse("late")


def _armed_timers() -> int:
    """Request timers still holding their callback (i.e. keeping a request alive)."""
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, asyncio.TimerHandle)
        and getattr(o, "_callback", None) is not None
        and getattr(o._callback, "__func__", None) is TimeoutMiddleware._set_timer_out
    )


def test_finished_requests_leave_no_armed_timer_and_timeouts_still_fire():
    assert cancel_request_timers() and cancel_request_timers()  # idempotent
    app = TimeoutMiddleware(
        Starlette(routes=[Route("/fast", _fast), Route("/slow", _slow)]), timeout=0.3
    )
    with TestClient(app) as client:
        before = _armed_timers()
        for _ in range(200):
            assert client.get("/fast").text == "ok"
        assert _armed_timers() - before == 0  # unpatched BentoML: 200, each for `timeout` s
        slow = client.get("/slow")
        assert slow.status_code == 504 and "0.3 seconds" in slow.text
