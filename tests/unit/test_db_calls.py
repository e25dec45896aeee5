"""Blocking database calls with a bound: a stuck call costs its request a TimeoutError,
never the event loop's own threads."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time

import pytest

from serving.db_calls import BoundedCalls
from training.settings import PROJECT_DIR


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


def test_the_blocking_form_times_out_and_says_when_every_thread_is_in_a_call():
    calls = BoundedCalls("test-sync", threads=1)
    release = threading.Event()
    assert not calls.busy()
    with pytest.raises(TimeoutError):
        calls.call(0.2, release.wait, 10)
    assert calls.busy()  # the stuck call holds the only thread
    release.set()
    assert calls.call(5, lambda: threading.current_thread().name).startswith("test-sync")
    assert not calls.busy()
    with pytest.raises(ZeroDivisionError):  # the call's own error reaches the caller
        calls.call(5, lambda: 1 / 0)


STUCK_AT_EXIT = """
import asyncio, threading
from serving.db_calls import BoundedCalls
try:
    asyncio.run(BoundedCalls("stuck").run(0.2, threading.Event().wait))
except TimeoutError:
    print("gave up")
"""


def test_a_call_stuck_for_ever_keeps_no_process_from_exiting():
    """A worker or capture sink whose database froze mid-call still exits when told to."""
    done = subprocess.run(
        [sys.executable, "-c", STUCK_AT_EXIT],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=PROJECT_DIR,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gave up"


def test_a_call_given_up_on_that_fails_later_says_so_in_the_log(caplog):
    calls = BoundedCalls("test-late", threads=1)
    release = threading.Event()

    def fails_late() -> None:
        release.wait(10)
        raise ConnectionResetError("server closed the connection")

    with pytest.raises(TimeoutError):
        calls.call(0.1, fails_late)
    with caplog.at_level(logging.WARNING, logger="serving.db_calls"):
        release.set()
        deadline = time.monotonic() + 10
        while calls.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the callback runs right after the call's outcome is set
    assert "test-late: a call given up on failed later" in caplog.text
    assert "server closed the connection" in caplog.text
