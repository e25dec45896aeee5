"""/feedback's handler below HTTP: what it counts, and when."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from serving.db_calls import BoundedCalls
from serving.feedback_api import _store_and_count
from tests.unit.test_challenger import _Counters
from tests.unit.test_loop_monitor import single
from training.loop_store import FeedbackStore


def test_labels_a_call_commits_after_its_request_gave_up_are_counted(tmp_path):
    """/feedback counts new labels on the database's thread, when they are committed: a
    call that answered 503 (its wait ran out) but committed later counts them, and the
    client's retry, which finds them unchanged, does not count them again."""
    store = FeedbackStore(f"sqlite:///{tmp_path / 'loop.sqlite'}")
    store.index([single("a" * 32, time.time(), "3", "Iris-setosa")])
    entered, release, label = threading.Event(), threading.Event(), store.label

    def slow_label(pairs):
        entered.set()
        release.wait(10)  # the database answers late
        return label(pairs)

    async def gives_up_once_under_way() -> None:
        call = asyncio.ensure_future(
            calls.run(10, _store_and_count, runtime, [("a" * 32, "Iris-setosa")])
        )
        assert await asyncio.to_thread(entered.wait, 10)  # the call runs: it cannot be dropped
        call.cancel()  # the request gives up, as on its wait's timeout
        with pytest.raises(asyncio.CancelledError):
            await call

    runtime = SimpleNamespace(feedback_store=SimpleNamespace(label=slow_label), metrics=_Counters())
    calls = BoundedCalls("test-feedback", threads=1)
    asyncio.run(gives_up_once_under_way())
    release.set()
    retry = calls.call(10, _store_and_count, runtime, [("a" * 32, "Iris-setosa")])
    assert (len(retry.added), retry.unchanged) == (0, 1)  # the late call had stored it
    key = ("feedback", ("correct", "true"), ("model_version", "3"))
    assert runtime.metrics.counts == {key: 1}
