"""Canary routing: sticky per client key, and only to the challenger the split names."""

from __future__ import annotations

import pytest

from serving.challenger import choose, in_canary
from serving.reloader import parse_canary
from serving.served_model import ModelHolder
from tests.unit.test_champion_watch import _served


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("10@v5", (10.0, "5")),
        ("150@v2", (100.0, "2")),
        ("0@v2", (0.0, "2")),
        ("10", (0.0, None)),  # an old, unbound tag: no canary
        ("abc@v3", (0.0, None)),
        ("nan@v3", (0.0, None)),
        ("inf@v3", (0.0, None)),
        ("", (0.0, None)),
        (None, (0.0, None)),
    ],
)
def test_canary_tag_parsing(value, parsed):
    assert parse_canary(value) == parsed


def test_the_split_goes_only_to_the_challenger_it_names():
    holder = ModelHolder(_served("1"))
    holder.challenger = _served("5")
    holder.canary_percent, holder.canary_version = 100.0, "4"  # @challenger moved to v5
    assert choose(holder, "client-a").identity.version == "1"
    holder.canary_version = "5"
    assert choose(holder, "client-a").identity.version == "5"


def test_a_client_key_always_lands_on_the_same_side():
    keys = [f"client-{i}" for i in range(2000)]
    first = [in_canary(10, k) for k in keys]
    assert first == [in_canary(10, k) for k in keys]
    assert 0.07 <= sum(first) / len(first) <= 0.13
    assert not any(in_canary(0, k) for k in keys)
    assert all(in_canary(100, k) for k in keys)


class _Counters:
    def __init__(self):
        self.counts: dict[tuple, float] = {}

    def __getattr__(self, name):
        counts = self.counts

        class _Metric:
            def labels(self, **labels):
                key = (name, *sorted(labels.items()))

                class _Child:
                    def inc(self, n=1):
                        counts[key] = counts.get(key, 0) + n

                return _Child()

            def inc(self, n=1):
                counts[(name,)] = counts.get((name,), 0) + n

        return _Metric()


def test_a_failing_challenger_is_counted_and_never_reaches_the_answer():
    import asyncio
    from dataclasses import replace

    import numpy as np

    from serving.challenger import Shadow

    class _Broken:
        def predict_proba(self, rows):
            raise RuntimeError("challenger exploded")

    champion = _served("1")
    challenger = replace(_served("2"), predictor=_Broken())
    metrics, captured = _Counters(), []
    shadow = Shadow(1.0, metrics, lambda *args: captured.append(args))

    async def answer() -> str:
        rows, proba = np.ones((1, 4), np.float32), np.array([[1.0, 0.0, 0.0]])
        shadow.maybe(challenger, champion, "id", True, rows, proba, "http")
        return "answered"

    async def scenario() -> str:
        result = await answer()
        await asyncio.sleep(0.05)  # let the scheduled shadow run
        return result

    assert asyncio.run(scenario()) == "answered"
    shadow.close()
    assert metrics.counts == {
        ("shadow_failed", ("challenger", "2"), ("champion", "1")): 1,
    }
    assert captured == []  # nothing captured for the broken challenger


def test_shadow_requests_are_scored_together_and_captured_per_answer():
    """Requests drawn between two wake-ups are one challenger call; each answer is still
    captured with its own id and its own rows' probabilities, and agreement counts rows."""
    import numpy as np

    from serving.challenger import Shadow

    calls = []

    class _Recorder:
        def predict_proba(self, rows):
            calls.append(len(rows))
            return np.tile([0.1, 0.2, 0.7], (len(rows), 1))  # always the third class

    from dataclasses import replace

    champion = _served("1")
    challenger = replace(_served("2"), predictor=_Recorder())
    metrics, captured = _Counters(), []
    shadow = Shadow(1.0, metrics, lambda *args: captured.append(args))
    third, first = np.array([[0.0, 0.1, 0.9]]), np.array([[0.9, 0.1, 0.0]])
    answers = [("a" * 32, True, third), ("b" * 32, False, np.vstack([first, third, third]))]
    for base, single, proba in answers:
        rows = np.full((len(proba), 4), 1.0, np.float32)
        shadow.maybe(challenger, champion, base, single, rows, proba, "http")
    assert shadow.drain() == 4
    assert calls == [4]  # one call for both answers
    ((_, bases, singles, ends, captured_rows, captured_proba, protocol, _, role),) = captured
    assert (bases, singles, ends.tolist(), protocol, role) == (
        ["a" * 32, "b" * 32],
        [True, False],
        [1, 4],
        "http",
        "shadow",
    )  # one hand-off for both answers: the second answer is rows 1-3
    assert len(captured_rows) == 4 and captured_proba.argmax(axis=1).tolist() == [2] * 4
    assert metrics.counts[("shadow_agreed", ("challenger", "2"), ("champion", "1"))] == 3
    assert metrics.counts[("shadow_scored", ("challenger", "2"), ("champion", "1"))] == 4
    shadow.close()
    shadow.maybe(challenger, champion, "c" * 32, True, rows[:1], third, "http")
    assert metrics.counts[("shadow_skipped",)] == 1  # closed: skipped, counted


def test_a_shadow_batch_of_several_protocols_is_captured_per_protocol():
    """Answers of several protocols scored in one call are handed over per protocol, each
    with exactly its own answers' rows and the challenger's probabilities for them."""
    import numpy as np

    from serving.challenger import Shadow

    class _Echo:  # the challenger answers each row with its first measurement as class
        def predict_proba(self, rows):
            return np.eye(3)[rows[:, 0].astype(int)]

    from dataclasses import replace

    champion = _served("1")
    challenger = replace(_served("2"), predictor=_Echo())
    metrics, captured = _Counters(), []
    shadow = Shadow(1.0, metrics, lambda *args: captured.append(args))
    sent = [
        ("a", 1, "http", 0),
        ("b", 2, "oip_grpc", 1),
        ("c", 1, "http", 2),
        ("d", 3, "oip_grpc", 0),
    ]
    for base, n, protocol, cls in sent:
        rows = np.full((n, 4), float(cls), np.float32)
        shadow.maybe(challenger, champion, base, n == 1, rows, np.eye(3)[[cls] * n], protocol)
    assert shadow.drain() == 7
    assert len(captured) == 2  # one hand-off per protocol
    got = {c[6]: (c[1], c[2], c[3].tolist(), c[5].argmax(axis=1).tolist()) for c in captured}
    assert got == {
        "http": (["a", "c"], [True, True], [1, 2], [0, 2]),
        "oip_grpc": (["b", "d"], [False, False], [2, 5], [1, 1, 0, 0, 0]),
    }
    assert metrics.counts[("shadow_agreed", ("challenger", "2"), ("champion", "1"))] == 7
    shadow.close()


def test_an_onnx_challenger_scores_big_batches_in_calls_onnx_runs_on_one_thread():
    """Over BULK_ROWS rows, ONNX Runtime would use its multi-thread session: the shadow
    cuts the rows into calls below it, in order; scikit-learn gets one call."""
    from dataclasses import replace

    import numpy as np

    from serving.challenger import Shadow
    from training.onnx_model import BULK_ROWS

    calls = []

    class _Echo:
        def predict_proba(self, rows):
            calls.append(len(rows))
            return np.eye(3)[rows[:, 0].astype(int) % 3]

    champion = _served("1")
    base = replace(_served("2"), predictor=_Echo())
    for runtime, expected in (("onnx", [BULK_ROWS - 1] * 2 + [2]), ("sklearn", [2 * BULK_ROWS])):
        challenger = replace(base, identity=replace(base.identity, runtime=runtime))
        calls.clear()
        captured = []
        shadow = Shadow(1.0, _Counters(), lambda *args, into=captured: into.append(args))
        rows = np.repeat(np.arange(2 * BULK_ROWS, dtype=np.float32)[:, None], 4, axis=1)
        shadow.maybe(
            challenger, champion, "a" * 32, False, rows, np.eye(3)[[0] * len(rows)], "http"
        )
        assert shadow.drain() == len(rows)
        assert calls == expected
        ((*_, scored, _protocol, _, _),) = captured
        assert scored.argmax(axis=1).tolist() == [i % 3 for i in range(len(rows))]  # in order
        shadow.close()
