"""A fleet behind a real load balancer: HAProxy in front of 3 ``bentoml serve`` replicas.

One ``mlflow server`` on PostgreSQL is the registry; the same PostgreSQL holds the retrain
job records (``IRIS_JOBS_URI``). Each replica has its own BentoML store and state folder,
as separate machines or pods do. Under 32 clients of steady load through the balancer:

(a) a retrain posted through the balancer is readable through it (from every replica)
    until it finishes, the other replicas refuse a second one, and every replica ends up
    serving the new champion;
(b) a rolling update replaces the replicas one at a time with 0 failed requests;
(c) each replaced replica, SIGTERMed, finishes a request it held in flight;
(d) a replica killed with SIGKILL (in the middle of a retrain) costs at most the requests
    on their way when it died (none sent after fails), the balancer routes around it, and
    its job is reported interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from harness.homes import TrainedHome
from harness.servers import Server, bento_server, descendants
from harness.training import train_home
from tests.utils.haproxy import Balancer, haproxy
from tests.utils.held_request import HeldRequest
from tests.utils.jobs import auth, start_retrain, wait_version
from tests.utils.load import Load
from tests.utils.mlflow_server import mlflow_server
from tests.utils.postgres import postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOKEN = "fleet-lb-token-7d"
CLIENTS = 32
PAUSE_S = 0.1
"""Think time per client: 32 clients stay a steady load without starving the 2-core
machine that also runs the replicas, the registry, the database and the retrain."""
DRAIN_S = 3.0
"""Readiness 503 to shutdown: HAProxy checks every 0.5 s and needs 2 failures."""
LEASE_S = 10.0
FOLLOW_S = 60.0
PHASE_S = 150.0
"""Upper bound on each phase's load (the load also stops when the phase is done)."""
JUST_DEAD_S = 0.25
"""After a replica's processes are seen gone, how long a request sent through HAProxy may
still fail on it (HAProxy marks it down after two failed checks 0.5 s apart)."""


def replica_env(seed: TrainedHome, root: Path, database: str) -> dict[str, str]:
    """A replica with a store and state of its own on the shared registry and job database."""
    store = shutil.copytree(seed.env["BENTOML_HOME"], root / "bentoml")
    return {
        **seed.env,
        "IRIS_HOME": str(root),
        "BENTOML_HOME": str(store),
        "IRIS_ADMIN_TOKEN": TOKEN,
        "IRIS_RELOAD_INTERVAL_S": "1",
        "IRIS_JOBS_URI": database,
        "IRIS_JOBS_LEASE_S": str(LEASE_S),
        "IRIS_DRAIN_S": str(DRAIN_S),
    }


def counters(lb: Balancer) -> Counter:
    """HAProxy's retries and redispatches, summed over the replicas."""
    total: Counter = Counter()
    for row in lb.stats().values():
        total["retries"] += int(row["wretr"] or 0)
        total["redispatches"] += int(row["wredis"] or 0)
    return total


def retrain_through_balancer(lb: Balancer, replicas: dict[str, Server]) -> str:
    """(a): returns the summary line; asserts along the way."""
    with Load(lb.url, CLIENTS, max_seconds=PHASE_S, pause_s=PAUSE_S) as load:
        started = time.monotonic()
        job_id = start_retrain(lb.url, TOKEN)
        refused = {}
        for name, server in replicas.items():  # a second retrain, on every replica
            answer = httpx.post(server.url + "/retrain", headers=auth(TOKEN), timeout=30)
            refused[name] = (answer.status_code, answer.json().get("job", {}).get("id"))
        assert set(refused.values()) == {(409, job_id)}, refused
        readers: Counter = Counter()
        with httpx.Client(base_url=lb.url, headers=auth(TOKEN), timeout=30) as client:
            while True:
                answer = client.get(f"/jobs/{job_id}")
                assert answer.status_code == 200, answer.text  # readable all along
                readers[answer.headers["x-replica"]] += 1
                job = answer.json()
                if job["state"] in ("succeeded", "failed"):
                    break
                assert time.monotonic() - started < PHASE_S, job
                time.sleep(0.2)
        took = time.monotonic() - started
        assert job["state"] == "succeeded", job
        assert job["promotion"]["promoted"] is True, job
        assert set(readers) == set(replicas), readers  # every replica answered for the job
        version = job["version"]
        lags = [wait_version(s.url, version, FOLLOW_S) for s in replicas.values()]
        result = load.stop()
    assert result.failed == [], result.failed[:5]
    return (
        f"fleet (a) retrain through HAProxy: job read {sum(readers.values())} times from"
        f" {len(readers)}/3 replicas until it succeeded in {took:.0f} s; second retrain"
        f" refused 409 by {len(refused)}/3 replicas; all 3 served v{version} within"
        f" {max(lags):.1f} s after; {CLIENTS} clients: {result.summary()}"
    )


def rolling_update(
    lb: Balancer, replicas: dict[str, Server], start: contextlib.ExitStack, new_replica
) -> tuple[str, str]:
    """(b) and (c): replace each replica, one at a time; returns two summary lines."""
    before = counters(lb)
    held_ok, in_flight, down_s = 0, [], []
    started = time.monotonic()
    with Load(lb.url, CLIENTS, max_seconds=PHASE_S, pause_s=PAUSE_S) as load:
        for name in list(replicas):
            old, new = replicas[name], start.enter_context(new_replica(name))  # surge first
            held = HeldRequest(old.url)  # a request the old replica has begun
            in_flight.append(int(lb.stats()[name]["scur"]))
            signalled = time.monotonic()
            os.kill(old.process.pid, signal.SIGTERM)  # to the main process, as Kubernetes does
            down_s.append(lb.wait_status(name, "DOWN", timeout=DRAIN_S + 10))
            time.sleep(max(0.0, DRAIN_S + 1.0 - (time.monotonic() - signalled)))
            assert old.process.poll() is None, "the old replica left before its held request"
            status, answer = held.finish()
            held_ok += status == 200 and answer.get("species") == "Iris-setosa"
            old.process.wait(timeout=60)
            lb.point(name, new.url)
            lb.wait_status(name, "UP", timeout=30)
            replicas[name] = new
        result = load.stop()
    took = time.monotonic() - started
    after = counters(lb) - before
    assert result.failed == [], result.failed[:5]
    assert held_ok == 3
    rolling = (
        f"fleet (b) rolling update of 3 replicas behind HAProxy in {took:.0f} s:"
        f" {len(result.failed)} failed of {result.ok + len(result.failed)} requests"
        f" ({after['retries']} retried, {after['redispatches']} redispatched by HAProxy);"
        f" {result.summary()}"
    )
    graceful = (
        f"fleet (c) SIGTERM: HAProxy took each replica out {max(down_s):.1f} s (max) after,"
        f" on /readyz 503; {held_ok}/3 requests held in flight across the shutdown answered"
        f" 200; {sum(in_flight)} balanced requests in flight at the signals, none failed"
    )
    return rolling, graceful


def exited(processes: list[psutil.Process], timeout: float = 10) -> float:
    """When every one of ``processes`` has exited (``time.monotonic()``). A zombie counts:
    its sockets are closed; here orphans wait about a second to be reaped."""

    def running(process: psutil.Process) -> bool:
        try:  # is_running() also tells a reused PID from the process
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while alive := [p.pid for p in processes if running(p)]:
        assert time.monotonic() < deadline, f"still running after SIGKILL: {alive}"
        time.sleep(0.005)
    return time.monotonic()


def kill_one(lb: Balancer, replicas: dict[str, Server]) -> str:
    """(d): SIGKILL a replica that runs a retrain; returns the summary line."""
    name, victim = next(iter(replicas.items()))
    before = counters(lb)
    with Load(lb.url, CLIENTS, max_seconds=PHASE_S, pause_s=PAUSE_S) as load:
        job_id = start_retrain(victim.url, TOKEN)
        time.sleep(2)  # the retrain is under way, with the load all around it
        eresp_before = int(lb.stats()[name]["eresp"])
        held_before = int(lb.stats()[name]["scur"])
        failed_before = len(load.result.failed)
        # The whole replica, as when its machine dies: BentoML's arbiter, its workers (each
        # in a session of its own) and the retrain child of the worker that took the job.
        doomed = []
        for pid in [victim.process.pid, *descendants(victim.process.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                doomed.append(psutil.Process(pid))
                doomed[-1].kill()
        killed = time.monotonic()  # signals sent; the processes die moments later
        # In flight on it at the kill: HAProxy's count just before, or just after if more
        # arrived in between (the sessions it holds to a dead server until they fail).
        held = max(held_before, int(lb.stats()[name]["scur"]))
        dead = exited(doomed)  # no process of the replica is left to take a request
        lb.wait_status(name, "DOWN", timeout=15)
        down_s = time.monotonic() - killed
        with httpx.Client(base_url=lb.url, headers=auth(TOKEN), timeout=30) as client:
            while (job := client.get(f"/jobs/{job_id}").json())["state"] == "running":
                assert time.monotonic() - killed < LEASE_S + 20, job
                time.sleep(0.2)
        reported_s = time.monotonic() - killed
        survivors_ok = load.result.ok
        time.sleep(3)  # and the survivors carry the load
        result = load.stop()
    lost = len(result.failed) - failed_before
    kinds = Counter(f.split(":")[0].split(" ")[0] for f in result.failed[failed_before:])
    broke = int(lb.stats()[name]["eresp"]) - eresp_before
    after = counters(lb) - before
    sent = result.failure_sent[failed_before:]
    ended = result.failure_times[failed_before:]
    assert job["state"] == "failed" and job["error"].startswith("interrupted"), job
    # Only requests already on their way when it died may fail: nothing sent once its
    # processes were gone (the balancer retries those elsewhere). This is the clients' own
    # record: HAProxy's response errors (``broke``) are not a complete count of them, as it
    # may close a kept-alive client connection whose server died before answering without
    # counting an error, so that the client retries (CI: 6 failed, 5 counted). ``dead`` is
    # when this thread saw them gone, a little after they were: it can only be lenient.
    # HAProxy may still send a request to the dead replica for a moment after that (one CI
    # run: a request sent 25 ms after failed the same way, unretried; why is not
    # established): ``JUST_DEAD_S`` allows that moment, well before HAProxy marks it down.
    assert all(t <= dead + JUST_DEAD_S for t in sent), (
        [round(t - dead, 3) for t in sent],
        result.failed[failed_before:],
    )
    # And each failed because of the kill: it ended after the signals, as a connection
    # closed without an answer (or HAProxy's 502 for it), never a survivor's error.
    assert all(t >= killed for t in ended), [round(t - killed, 3) for t in ended]
    assert set(kinds) <= {"RemoteProtocolError", "ReadError", "502"}, result.failed[failed_before:]
    assert result.ok > survivors_ok
    assert set(result.replicas) >= set(replicas) - {name}
    return (
        f"fleet (d) SIGKILL of a replica mid-retrain: {lost} failed requests {dict(kinds)},"
        f" all ended after the kill and sent before its processes were seen gone"
        f" (or within {JUST_DEAD_S:g} s after)"
        f" ({(dead - killed) * 1000:.0f} ms after the signals)"
        f" (HAProxy counted {broke} response errors on it; {held} in flight at the kill;"
        f" {after['retries']} retried, {after['redispatches']} redispatched elsewhere);"
        f" HAProxy marked it down in {down_s:.1f} s; its job reported failed"
        f" ({job['error'].split('(')[0].strip()}) {reported_s:.1f} s after the kill, via the"
        " balancer;"
        f" {result.summary()}"
    )


def test_fleet_behind_haproxy(tmp_path, record_property):
    with (
        postgres_server() as database,
        mlflow_server(tmp_path / "mlflow", backend_uri=database) as registry,
    ):
        # v1 @champion, outdated: the retrain through the balancer is better and promoted.
        seed = train_home(tmp_path / "seed", tracking_uri=registry.url, outdated=True)
        serial = Counter()

        @contextlib.contextmanager
        def new_replica(name: str):
            serial[name] += 1
            root = tmp_path / f"{name}-{serial[name]}"
            with bento_server(replica_env(seed, root, database), root / "logs") as server:
                yield server

        with contextlib.ExitStack() as stack:
            replicas = {name: stack.enter_context(new_replica(name)) for name in ("r0", "r1", "r2")}
            lb = stack.enter_context(
                haproxy({name: s.url for name, s in replicas.items()}, tmp_path / "lb")
            )
            record_property("reliability", retrain_through_balancer(lb, replicas))
            for line in rolling_update(lb, replicas, stack, new_replica):
                record_property("reliability", line)
            record_property("reliability", kill_one(lb, replicas))
