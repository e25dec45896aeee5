"""BentoML's per-request timeout timer is cancelled when the request ends."""

from __future__ import annotations

import asyncio
import gc

import httpx
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

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

    async def scenario() -> tuple[int, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            before = _armed_timers()
            for _ in range(200):
                assert (await client.get("/fast")).text == "ok"
            armed = _armed_timers() - before  # unpatched BentoML: 200, each for `timeout` s
            return armed, await client.get("/slow")

    armed, slow = asyncio.run(scenario())
    assert armed == 0
    assert slow.status_code == 504 and "0.3 seconds" in slow.text
