"""Blocking database calls with a bound: a stuck call costs its request a TimeoutError,
never the event loop's own threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.db_calls import BoundedCalls


def test_a_stuck_call_times_out_on_its_own_threads_and_a_queued_one_is_dropped():
    calls = BoundedCalls("test-db", threads=1)
    release, ran = threading.Event(), []

    def stuck() -> str:
        assert threading.current_thread().name.startswith("test-db")  # our own threads
        release.wait(10)
        return "late"

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await calls.run(0.2, stuck)
        with pytest.raises(TimeoutError):  # queued behind the stuck one: never runs
            await calls.run(0.2, ran.append, "queued")
        # The loop's default threads were never used: they still answer at once.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 1) == "free"

    asyncio.run(scenario())
    release.set()
    assert asyncio.run(calls.run(5, lambda: threading.current_thread().name)).startswith("test-db")
    assert ran == []
