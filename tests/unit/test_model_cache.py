"""One fetch per server: workers share the fetched folder, and a failed fetch's verdict."""

from __future__ import annotations

import threading
import time

import pytest

from serving import model_cache
from serving.model_cache import FetchError
from training.settings import Settings


@pytest.fixture
def counted_fetch(monkeypatch):
    """The fetch subprocess replaced by a slow folder-maker that counts its calls."""
    calls: list[str] = []
    failure: dict = {"error": None}

    def fake_fetch(name, version, dest, env=None, timeout_s=0):
        calls.append(version)
        time.sleep(0.3)  # long enough for every other worker to queue on the lock
        if failure["error"] is not None:
            raise failure["error"]
        dest.mkdir()
        (dest / "MLmodel").write_text("fetched once\n")
        return dest

    monkeypatch.setattr(model_cache, "fetch", fake_fetch)
    return calls, failure


def test_concurrent_workers_fetch_a_version_once(tmp_path, counted_fetch):
    calls, _ = counted_fetch
    settings = Settings(home=tmp_path)
    results: list = []

    def worker() -> None:
        results.append(model_cache.fetched(settings, "2", "abcdef1234567890"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["2"]
    assert len(set(results)) == 1 and (results[0] / "MLmodel").read_text() == "fetched once\n"
    assert results[0].parent == model_cache.cache_dir(settings)


def test_a_refused_version_is_not_fetched_again_by_other_workers(tmp_path, counted_fetch):
    calls, failure = counted_fetch
    failure["error"] = FetchError("ModelLoadError: untrusted types", permanent=True)
    settings = Settings(home=tmp_path)
    for _ in range(3):  # three workers in turn
        with pytest.raises(FetchError, match="untrusted types") as raised:
            model_cache.fetched(settings, "2", "run2")
        assert raised.value.permanent
    assert calls == ["2"]


def test_version_routes_do_not_share_failures_or_accept_paths(tmp_path, counted_fetch):
    calls, failure = counted_fetch
    failure["error"] = FetchError("no such version", missing=True)
    settings = Settings(home=tmp_path)
    for _ in range(2):
        with pytest.raises(FetchError):
            model_cache.fetched(settings, "999", share_failure=False)
    assert calls == ["999", "999"]
    assert not list(model_cache.cache_dir(settings).glob("*.failed"))
    with pytest.raises(FetchError) as raised:
        model_cache.fetched(settings, "../../etc", share_failure=False)
    assert raised.value.missing and calls == ["999", "999"]


def test_only_the_newest_fetched_versions_are_kept(tmp_path, counted_fetch):
    settings = Settings(home=tmp_path)
    for version in range(1, 6):
        model_cache.fetched(settings, str(version), f"run{version}")
    kept = sorted(p.name for p in model_cache.cache_dir(settings).iterdir() if p.is_dir())
    assert len(kept) == model_cache.KEEP and kept[-1].startswith("v5-")
