"""The per-worker cache of non-champion versions: bounded, least recently used out."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.model_cache import FetchError
from serving.oip.protocol import InferError
from serving.oip.versions import VersionCache
from serving.served_model import ModelHolder, ModelIdentity, ServedModel
from training.settings import Settings


class Constant:
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return np.tile([1.0, 0.0, 0.0], (len(features), 1))


def model(version: str) -> ServedModel:
    identity = ModelIdentity("iris-classifier", version, "", "", "registry")
    return ServedModel(identity, ("a", "b", "c"), Constant(), True)


class CountingCache(VersionCache):
    """The real cache; only the subprocess fetch is replaced by a counter."""

    def __init__(self, capacity: int, registered: set[str]):
        super().__init__(Settings(), ModelHolder(model("1")), capacity)
        self.registered = registered
        self.loads: list[str] = []

    def _fetch_and_load(self, version: str) -> ServedModel:
        self.loads.append(version)
        if version not in self.registered:
            raise FetchError("no such version", missing=True)
        return model(version)


def run(coro):
    return asyncio.run(coro)


def test_champion_needs_no_load_and_others_are_kept_up_to_capacity():
    cache = CountingCache(2, {"2", "3", "4"})
    assert run(cache.get("")).identity.version == "1"
    assert run(cache.get("1")).identity.version == "1"
    for version in ("2", "3", "2", "4"):
        assert run(cache.get(version)).identity.version == version
    assert cache.loads == ["2", "3", "4"]  # "2" was a hit the second time
    assert cache.loaded() == ["2", "4"]  # "3" was least recently used, so it went
    run(cache.get("3"))
    assert cache.loads[-1] == "3" and cache.loaded() == ["4", "3"]


def test_missing_versions_are_not_found_and_not_asked_again_at_once():
    cache = CountingCache(2, set())
    for _ in range(3):
        with pytest.raises(InferError, match="no version '9'") as error:
            run(cache.get("9"))
        assert error.value.kind == "not_found"
    assert cache.loads == ["9"]


@pytest.mark.parametrize("version", ["abc", "-1", "1.0", "2 "])
def test_non_numeric_versions_never_reach_the_registry(version):
    cache = CountingCache(2, {"2"})
    with pytest.raises(InferError):
        run(cache.get(version))
    assert cache.loads == []


def test_capacity_zero_serves_the_champion_only():
    cache = CountingCache(0, {"2"})
    with pytest.raises(InferError, match="no version '2' loaded"):
        run(cache.get("2"))
    assert cache.loads == []
