"""Sustained load while the champion changes three times: nothing fails, nothing mixes."""

from __future__ import annotations

import re
import time

import httpx

from harness.servers import bento_server
from harness.training import iris_train, train_home
from tests.utils.jobs import retrain_and_wait
from tests.utils.load import Load

TOKEN = "load-token-1b2c"
CLIENTS = 32
MIN_SECONDS = 30


def served_by_every_worker(server) -> set[str]:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return set(
        re.findall(
            r'iris_served_model_version\{model_name="iris-classifier",pid="\d+"\} (\d+)', text
        )
    )


def test_load_with_three_retrains_a_promotion_and_a_rollback(tmp_path, record_property):
    """v1 is outdated: the first retrain (v2) is better and promoted; the next two are the
    same model again (v3, v4), kept as challengers by the gate. Then a rollback to v1 and
    an explicit promotion of the challenger v4."""
    home = train_home(tmp_path / "home", outdated=True)
    env = {**home.env, "IRIS_ADMIN_TOKEN": TOKEN, "IRIS_RELOAD_INTERVAL_S": "1"}
    with bento_server(env, tmp_path, workers=2) as server:
        started = time.monotonic()
        with Load(server.url, clients=CLIENTS, max_seconds=600) as load:
            jobs = [retrain_and_wait(server.url, TOKEN) for _ in range(3)]  # v2, v3, v4
            iris_train(home.env, "promote", "1")  # a rollback to an older version
            time.sleep(3)
            iris_train(home.env, "promote", "4")  # and an explicit promotion of the newest
            while time.monotonic() - started < MIN_SECONDS:
                time.sleep(0.5)
            deadline = time.monotonic() + 20
            while served_by_every_worker(server) != {"4"} and time.monotonic() < deadline:
                time.sleep(0.5)
            final = served_by_every_worker(server)
            time.sleep(2)
            result = load.stop()
        elapsed = time.monotonic() - started
    summary = (
        f"load held: {elapsed:.0f} s, {CLIENTS} clients, 3 retrains (1 promoted) + rollback"
        " + promotion:"
        f" {result.summary()}"
    )
    record_property("reliability", summary)
    assert [j["state"] for j in jobs] == ["succeeded"] * 3, jobs
    assert [j["version"] for j in jobs] == ["2", "3", "4"]
    assert [j["promotion"]["promoted"] for j in jobs] == [True, False, False], jobs
    assert result.failed == [], result.failed[:5]
    assert elapsed >= MIN_SECONDS
    assert result.ok > 1000
    # Every answer named one version; only versions that were champion at some point
    # (v3 never was), and each of them did answer.
    assert set(result.versions) == {"1", "2", "4"}
    assert final == {"4"}, final  # every worker ends on the final champion
