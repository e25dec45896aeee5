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
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from training.logs import one_line

logger = logging.getLogger(__name__)

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
        future = self._submit(call, args)
        try:
            # A timeout cancels the wrapper, and so the call if it is still queued.
            return await asyncio.wait_for(asyncio.wrap_future(future), wait_s)
        except TimeoutError:
            self._given_up(future)
            raise

    def call(self, wait_s: float, call: Callable[..., T], *args) -> T:
        """:meth:`run` for a caller without an event loop: blocks for up to ``wait_s``."""
        future = self._submit(call, args)
        try:
            return future.result(wait_s)
        except TimeoutError:
            self._given_up(future)
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
            with self._lock:  # busy() counts the call from the moment it cannot be cancelled
                if not future.set_running_or_notify_cancel():  # given up while queued
                    continue
                self._running += 1
            result, error = None, None
            try:
                result = call(*args)
            except BaseException as e:  # noqa: BLE001 - the caller gets it
                error = e
            with self._lock:  # ...to the moment its caller can see the outcome
                self._running -= 1
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _given_up(self, future: Future) -> None:
        """The caller stopped waiting: a call still queued never runs, and one under way
        that fails later says so in the log (nobody else reads its outcome)."""
        if future.cancel():
            return

        def failed_late(done: Future) -> None:
            if not done.cancelled() and done.exception() is not None:
                logger.warning(
                    "%s: a call given up on failed later: %s", self.name, one_line(done.exception())
                )

        future.add_done_callback(failed_late)
