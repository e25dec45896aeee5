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

    def fake_fetch(name, version, dest, env=None, timeout_s=0, hold_fd=None):
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
            model_cache.fetched(settings, "2", "b2")
        assert raised.value.permanent
    assert calls == ["2"]


def test_only_registry_versions_and_run_ids_make_paths(tmp_path, counted_fetch):
    calls, _ = counted_fetch
    settings = Settings(home=tmp_path)
    for version, run_id in (("../../etc", "run"), ("\u0663", "abc"), ("2", "../x")):
        with pytest.raises(FetchError) as raised:
            model_cache.fetched(settings, version, run_id)
        assert raised.value.missing
    assert calls == []


def test_a_killed_fetchs_leftovers_are_removed_at_the_next_fetch(tmp_path, counted_fetch):
    settings = Settings(home=tmp_path)
    cache = model_cache.cache_dir(settings)
    cache.mkdir(parents=True)
    (cache / ".v1-ab.partial").mkdir()
    model_cache.fetched(settings, "2", "cd")
    assert not (cache / ".v1-ab.partial").exists()


def test_only_the_newest_fetched_versions_are_kept(tmp_path, counted_fetch):
    settings = Settings(home=tmp_path)
    for version in range(1, 6):
        model_cache.fetched(settings, str(version), f"a{version}")
        time.sleep(0.02)  # distinct modification times
    kept = sorted(p.name for p in model_cache.cache_dir(settings).iterdir() if p.is_dir())
    # Pruning runs before each fetch, making room: v1 and v2 went when v4 and v5 came.
    assert kept == ["v3-a3", "v4-a4", "v5-a5"]
