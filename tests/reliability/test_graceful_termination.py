"""SIGTERM to a real ``bentoml serve``: readiness drops at once, in-flight requests finish.

The signal goes to the server's main process only, as Kubernetes and a process manager
send it; BentoML's arbiter passes it on to the workers.
"""

from __future__ import annotations

import os
import signal
import time

import httpx

from harness.servers import bento_server
from tests.utils.held_request import HeldRequest
from tests.utils.load import GOOD

DRAIN_S = 3.0


def test_sigterm_turns_readiness_503_and_finishes_in_flight_requests(
    trained_home, tmp_path, record_property
):
    env = {**trained_home.env, "IRIS_DRAIN_S": str(DRAIN_S)}
    with bento_server(env, tmp_path) as server:
        in_flight = HeldRequest(server.url)
        time.sleep(0.3)  # the worker has the headers: the request is in progress
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)

        deadline = time.monotonic() + 5
        ready = httpx.get(server.url + "/readyz", timeout=5)
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            ready = httpx.get(server.url + "/readyz", timeout=5)
        readiness_s = time.monotonic() - signalled
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["code"] == "draining"
        # Still serving new requests while the balancer takes it out of rotation.
        assert httpx.get(server.url + "/livez", timeout=5).status_code == 200
        assert httpx.post(server.url + "/predict", json=GOOD, timeout=5).status_code == 200

        # Past the drain: uvicorn is shutting down and waits for our unfinished request.
        time.sleep(DRAIN_S + 1.0)
        assert server.process.poll() is None, "server exited with a request in flight"
        status, answer = in_flight.finish()
        assert status == 200 and answer["species"] == "Iris-setosa", answer

        server.process.wait(timeout=30)
        stopped_s = time.monotonic() - signalled
        assert server.process.returncode is not None
    record_property(
        "reliability",
        f"graceful termination: /readyz 503 {readiness_s:.2f} s after SIGTERM, still serving"
        f" during the {DRAIN_S:g} s drain; a request in flight across the shutdown answered"
        f" 200; process gone {stopped_s:.1f} s after SIGTERM",
    )
