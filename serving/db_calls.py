"""Blocking database calls from request handlers: on threads of their own, with a bound.

A database that stops answering altogether (a frozen server, a connection cut off
mid-call) cancels nothing on its side, and a statement timeout cannot fire. A handler
that waited on it would hang its request, and a thread of the event loop's default
pool with it; a few such calls would leave no thread for what else runs there (a
scikit-learn model's predictions, a model version's load). So each store's calls get a
few threads of their own, and the request gives up after ``wait_s``: its handler answers
503. The call itself may still finish later, so what it writes must be safe to send
again (a label is idempotent; a second retrain meets the first one's 409).

The threads are daemon threads: a call stuck on a frozen database keeps no process from
exiting (a ``concurrent.futures`` pool's threads are joined at exit, so a worker or a
capture sink holding one would outlive its SIGTERM until the database answered).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

MARGIN_S = 5.0
"""How much longer than the database's own statement timeout a request waits."""


def answer_within(settings) -> float:
    """How long a request waits for its database call: the statement timeout
    (``IRIS_DB_STATEMENT_TIMEOUT_S``) plus ``MARGIN_S``."""
    return settings.db_statement_timeout_s + MARGIN_S


class BoundedCalls:
    """A store's blocking calls, on ``threads`` daemon threads of their own (started at
    the first call)."""

    def __init__(self, name: str, threads: int = 4):
        self.name = name
        self.threads = threads
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._running = 0

    async def run(self, wait_s: float, call: Callable[..., T], *args) -> T:
        """``call(*args)`` on one of the threads.

        Raises:
            TimeoutError: no answer within ``wait_s`` (a call still queued is dropped;
                one under way runs on).
        """
        done = asyncio.wrap_future(self._submit(call, args))  # cancelling it cancels the call
        return await asyncio.wait_for(done, wait_s)

    def call(self, wait_s: float, call: Callable[..., T], *args) -> T:
        """:meth:`run` for a caller without an event loop: blocks for up to ``wait_s``."""
        future = self._submit(call, args)
        try:
            return future.result(wait_s)
        except TimeoutError:
            future.cancel()  # still queued: never runs
            raise

    def busy(self) -> bool:
        """Whether every thread is in a call (one more would queue)."""
        with self._lock:
            return self._running >= self.threads

    def _submit(self, call: Callable[..., T], args: tuple) -> Future:
        future: Future = Future()
        with self._lock:
            if self._started < self.threads:
                self._started += 1
                threading.Thread(
                    target=self._serve, name=f"{self.name}_{self._started}", daemon=True
                ).start()
        self._calls.put((future, call, args))
        return future

    def _serve(self) -> None:
        while True:
            future, call, args = self._calls.get()
            if not future.set_running_or_notify_cancel():  # given up while queued
                continue
            with self._lock:
                self._running += 1
            try:
                future.set_result(call(*args))
            except BaseException as e:  # noqa: BLE001 - the caller gets it
                future.set_exception(e)
            finally:
                with self._lock:
                    self._running -= 1
