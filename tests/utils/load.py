"""A bounded closed-loop load generator for reliability tests (threads + keep-alive clients)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

GOOD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@dataclass
class LoadResult:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    replicas: Counter = field(default_factory=Counter)
    """Answers per replica, when a load balancer names it (``X-Replica``)."""
    latencies_ms: list[float] = field(default_factory=list)
    failure_times: list[float] = field(default_factory=list)
    """When each failed request ended (``time.monotonic()``)."""
    failure_sent: list[float] = field(default_factory=list)
    """When each failed request was sent (``time.monotonic()``)."""

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {len(self.failed)} failed, versions {dict(self.versions)},"
            f" p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms"
        )


class Load:
    """``clients`` threads POSTing /predict until ``stop()`` or ``max_seconds``.

    Each client waits ``pause_s`` between requests (0: closed loop, as fast as answers
    come). Every answer is checked: status 200, a species, probabilities summing to 1, and a
    model version. Anything else is a failure, with its text.
    """

    def __init__(
        self,
        url: str,
        clients: int = 32,
        max_seconds: float = 120,
        timeout: float = 10,
        pause_s: float = 0.0,
    ):
        self.url, self.clients, self.timeout, self.pause_s = url, clients, timeout, pause_s
        self.deadline = time.monotonic() + max_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.result

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                started, sent = time.perf_counter(), time.monotonic()
                problem, version = None, None
                try:
                    response = client.post("/predict", json=GOOD)
                    body = response.json()
                    version = body.get("model", {}).get("version")
                    if response.status_code != 200:
                        problem = f"{response.status_code} {response.text[:200]}"
                    elif body["species"] != "Iris-setosa" or not version:
                        problem = f"malformed answer {body}"
                    elif abs(sum(body["probabilities"].values()) - 1) > 1e-5:
                        problem = f"probabilities do not sum to 1: {body}"
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    problem = f"{type(e).__name__}: {e}"
                elapsed = (time.perf_counter() - started) * 1000
                with self._lock:
                    if problem:
                        self.result.failed.append(problem)
                        self.result.failure_times.append(time.monotonic())
                        self.result.failure_sent.append(sent)
                    else:
                        self.result.ok += 1
                        self.result.versions[version] += 1
                        self.result.latencies_ms.append(elapsed)
                        self.result.replicas[response.headers.get("x-replica")] += 1
                if self.pause_s:
                    self._stop.wait(self.pause_s)
