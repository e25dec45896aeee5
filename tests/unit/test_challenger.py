"""Canary routing: sticky per client key, and only to the challenger the split names."""

from __future__ import annotations

import pytest

from serving.challenger import choose, in_canary
from serving.served_model import ModelHolder
from tests.unit.test_champion_watch import _served
from training.schema import parse_canary


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
    first = [in_canary(10, k, "2") for k in keys]
    assert first == [in_canary(10, k, "2") for k in keys]
    assert 0.07 <= sum(first) / len(first) <= 0.13
    assert not any(in_canary(0, k, "2") for k in keys)
    assert all(in_canary(100, k, "2") for k in keys)


def test_each_canary_draws_its_clients_afresh_and_a_raise_only_adds():
    keys = [f"client-{i}" for i in range(4000)]
    v2 = {k for k in keys if in_canary(10, k, "2")}
    v3 = {k for k in keys if in_canary(10, k, "3")}
    assert 0.07 <= len(v3) / len(keys) <= 0.13
    # Independent draws share about 10% of a 10% set; the same buckets would share all.
    assert len(v2 & v3) / len(v2) < 0.25, "the next canary picked the same clients"
    assert v2 <= {k for k in keys if in_canary(25, k, "2")}  # 10% -> 25%: nobody leaves


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
