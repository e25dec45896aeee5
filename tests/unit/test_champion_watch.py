"""The workers' champion poll: MLflow's REST errors read right, and refused versions backed off."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
from collections.abc import Iterator

import numpy as np
import pytest

from harness.processes import serve_in_thread
from serving import model_cache, reloader
from serving.champion_lookup import Champion, RegistryUnreachableError, champion
from serving.served_model import ModelHolder, ModelIdentity, ServedModel
from training.onnx_export import compare
from training.onnx_model import normalized
from training.settings import Settings


@contextlib.contextmanager
def fake_registry(status: int, body: str, headers: dict | None = None) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every GET with ``status`` and ``body``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args) -> None:
            pass

    with serve_in_thread(Handler) as url:
        yield url


def _mlflow_error(code: str, message: str) -> str:
    return json.dumps({"error_code": code, "message": message})


def test_rest_answers_that_mean_nothing_to_serve():
    missing = _mlflow_error("RESOURCE_DOES_NOT_EXIST", "Registered Model with name=x not found")
    with fake_registry(404, missing) as url:
        assert champion(url, "x") is None
    no_alias = _mlflow_error(
        "INVALID_PARAMETER_VALUE", "Registered model alias champion not found."
    )
    with fake_registry(400, no_alias) as url:
        assert champion(url, "x") is None


@pytest.mark.parametrize(
    ("status", "body", "headers", "match"),
    [
        (404, "<html>Not Found</html>", {}, "HTTP 404"),  # a wrong URL is not "no champion"
        (400, _mlflow_error("INVALID_PARAMETER_VALUE", "bad name"), {}, "bad name"),
        (403, "", {}, "refused our credentials"),
        (302, "", {"Location": "http://elsewhere.invalid/"}, "HTTP 302"),  # never followed
        (200, "{}", {}, "unexpected answer"),
    ],
    ids=["html-404", "other-400", "forbidden", "redirect", "no-version"],
)
def test_rest_answers_that_are_errors(status, body, headers, match):
    with (
        fake_registry(status, body, headers) as url,
        pytest.raises(RegistryUnreachableError, match=match),
    ):
        champion(url, "iris-classifier")


def test_parity_rejects_non_finite_and_zero_rows_stay_zero():
    good = np.array([[0.2, 0.3, 0.5]])
    assert compare(good, good) is None
    assert "non-finite" in compare(good, np.full_like(good, np.nan))
    assert "non-finite" in compare(np.full_like(good, np.nan), good)
    assert normalized(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 2.0]])).tolist() == [
        [0.0, 0.0, 0.0],
        [0.25, 0.25, 0.5],
    ]


class _Predictor:
    def predict_proba(self, features):
        return np.tile([1.0, 0.0, 0.0], (len(features), 1))


def _served(version: str) -> ServedModel:
    identity = ModelIdentity("iris-classifier", version, "champion", f"abc{version}", "bento")
    return ServedModel(identity, ("a", "b", "c"), _Predictor(), True)


@pytest.fixture
def watcher(monkeypatch, tmp_path):
    """A watcher whose registry says v2 is champion and whose fetch fails as told."""
    clock = {"now": 1000.0}
    calls: list[str] = []
    failure: dict = {"error": None}

    def fake_fetch(name, version, dest, env=None, timeout_s=0, hold_fd=None):
        calls.append(version)
        raise failure["error"]

    monkeypatch.setattr(reloader.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(model_cache, "fetch", fake_fetch)
    monkeypatch.setattr(model_cache.time, "time", lambda: clock["now"])
    monkeypatch.setattr(
        reloader.champion_lookup,
        "champion",
        lambda uri, name, alias="champion": Champion("2", "abc2") if alias == "champion" else None,
    )
    w = reloader.ChampionWatcher(Settings(home=tmp_path), ModelHolder(_served("1")))
    return w, clock, calls, failure


def test_a_refused_version_is_retried_after_minutes_not_every_poll(watcher, caplog):
    w, clock, calls, failure = watcher
    failure["error"] = model_cache.FetchError("ModelLoadError: untrusted types", permanent=True)
    assert w.check_once() is False and calls == ["2"]
    clock["now"] += model_cache.RETRY_REFUSED_S - 1
    assert w.check_once() is False and calls == ["2"]  # still backing off
    clock["now"] += 2
    assert w.check_once() is False and calls == ["2", "2"]
    assert w.holder.current.identity.version == "1"
    assert caplog.text.count("Could not load champion v2") == 2


def test_a_failure_that_may_pass_is_retried_sooner(watcher):
    w, clock, calls, failure = watcher
    failure["error"] = model_cache.FetchError("fetching v2 took over 300 s")
    assert w.check_once() is False and calls == ["2"]
    clock["now"] += model_cache.RETRY_FAILED_S + 1
    assert w.check_once() is False and calls == ["2", "2"]
    assert model_cache.RETRY_FAILED_S < model_cache.RETRY_REFUSED_S


def test_a_promoted_challenger_is_swapped_in_from_memory(watcher, monkeypatch):
    """promote-challenger: the champion moves to the version already held as challenger;
    the worker serves it at once, with no fetch subprocess and no store lookup."""
    w, _, calls, failure = watcher
    failure["error"] = AssertionError("must not fetch")
    monkeypatch.setattr(
        reloader.ChampionWatcher,
        "_from_local_store",
        lambda *a: (_ for _ in ()).throw(AssertionError("must not look up the store")),
    )
    challenger = _served("2")
    w.holder.set_challenger(
        reloader.replace(
            challenger, identity=reloader.replace(challenger.identity, alias="challenger")
        )
    )
    assert w.check_once() is True
    assert calls == []
    current = w.holder.current.identity
    assert (current.version, current.alias) == ("2", "champion")
    assert w.holder.challenger is None


def test_a_held_challenger_outlives_the_pruning_of_fetched_versions(monkeypatch, tmp_path):
    """The capture sink loads the challenger from its fetched folder (again after a
    restart): while a worker holds it, every poll marks it used, so fetching newer
    versions never prunes it."""
    settings = Settings(home=tmp_path)
    cache = model_cache.cache_dir(settings)
    for age, name in enumerate(["v3-abc3", "v4-abc4", "v5-abc5"]):
        (cache / name).mkdir(parents=True)
        os.utime(cache / name, (1000 + age, 1000 + age))  # the challenger's is the oldest
    monkeypatch.setattr(
        reloader.champion_lookup,
        "champion",
        lambda uri, name, alias="champion": Champion(
            *(("1", "abc1"), ("3", "abc3"))[alias != "champion"]
        ),
    )
    monkeypatch.setattr(reloader.champion_lookup, "model_tag", lambda *a: None)
    w = reloader.ChampionWatcher(settings, ModelHolder(_served("1")))
    held = _served("3")
    w.holder.set_challenger(
        reloader.replace(
            held,
            identity=reloader.replace(held.identity, alias="challenger"),
            model_dir=cache / "v3-abc3",
        )
    )
    assert w.check_once() is False  # nothing to swap: the same champion and challenger
    model_cache._prune(cache, keep=model_cache.KEEP - 1)  # what the next fetch does first
    assert sorted(p.name for p in cache.iterdir()) == ["v3-abc3", "v5-abc5"]


def test_a_registry_outage_is_logged_once_and_its_end_once(monkeypatch, caplog, tmp_path):
    from serving.champion_lookup import RegistryUnreachableError

    caplog.set_level("INFO", logger="serving.reloader")
    state = {"down": True}

    def lookup(uri, name, alias="champion"):
        if state["down"]:
            raise RegistryUnreachableError("connection refused\nsecond line")
        return None

    monkeypatch.setattr(reloader.champion_lookup, "champion", lookup)
    monkeypatch.setattr(reloader.champion_lookup, "model_tag", lambda *a: None)
    w = reloader.ChampionWatcher(Settings(home=tmp_path), ModelHolder(_served("1")))
    for _ in range(3):
        assert w.check_once() is False
    state["down"] = False
    for _ in range(2):
        w.check_once()
    text = caplog.text
    assert text.count("RegistryUnreachableError: connection refused") == 1
    assert "second line" not in text
    assert text.count("Registry reachable again") == 1
