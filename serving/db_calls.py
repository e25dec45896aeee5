"""Blocking database calls from request handlers: on threads of their own, with a bound.

A database that stops answering altogether (a frozen server, a connection cut off
mid-call) cancels nothing on its side, and a statement timeout cannot fire. A handler
that waited on it would hang its request, and a thread of the event loop's default
pool with it; a few such calls would leave no thread for what else runs there (a
scikit-learn model's predictions, a model version's load). So each store's calls get a
few threads of their own, and the request gives up after ``wait_s``: its handler answers
503. The call itself may still finish later, so what it writes must be safe to send
again (a label is idempotent; a second retrain meets the first one's 409).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

MARGIN_S = 5.0
"""How much longer than the database's own statement timeout a request waits."""


def answer_within(settings) -> float:
    """How long a request waits for its database call: the statement timeout
    (``IRIS_DB_STATEMENT_TIMEOUT_S``) plus ``MARGIN_S``."""
    return settings.db_statement_timeout_s + MARGIN_S


class BoundedCalls:
    """A store's blocking calls, on ``threads`` threads of their own."""

    def __init__(self, name: str, threads: int = 4):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def run(self, wait_s: float, call: Callable[..., T], *args) -> T:
        """``call(*args)`` on one of the threads.

        Raises:
            TimeoutError: no answer within ``wait_s`` (a call still queued is dropped;
                one under way runs on).
        """
        done = asyncio.get_running_loop().run_in_executor(self._pool, call, *args)
        return await asyncio.wait_for(done, wait_s)
