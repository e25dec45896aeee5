"""Start each peer on 127.0.0.1, time its cold start, read its memory, and always stop it.

Every server runs in its own process group (``harness.processes.start_group``). BentoML's
workers get process groups of their own, so stopping also kills, by PID, every process
that was in the server's tree: nothing we started outlives the run, nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.report import TITLES
from harness.processes import free_port, start_group
from harness.servers import BIN, PROJECT_DIR, Server, private_bentoml_home
from training.schema import FEATURES

OUR_TARGET = "service:IrisClassifier"
NOOP_TARGET = "benchmarks.peers.noop_service:NoopIris"
SEED_APP = "benchmarks.peers.seed_server:app"
CHAMPION_URI = "models:/iris-classifier@champion"


@dataclass(frozen=True)
class Peer:
    """One server under test: how to start it, where it is healthy, what it is sent."""

    key: str
    title: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health_path: str
    predict_path: str
    body: dict
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def our_body(row: tuple[float, ...]) -> dict:
    return dict(zip(FEATURES, row, strict=True))


def mlflow_body(row: tuple[float, ...]) -> dict:
    return {"dataframe_split": {"columns": list(FEATURES), "data": [list(row)]}}


def build_peers(
    train_env: dict[str, str], work: Path, row: tuple[float, ...], mlflow_workers: int
) -> dict[str, Peer]:
    """The four peers, each on free ports, all serving the registry's champion."""
    cpus = os.cpu_count() or 1
    shared_home = Path(train_env["BENTOML_HOME"])
    registry = {
        "MLFLOW_TRACKING_URI": train_env["IRIS_TRACKING_URI"],
        # MLflow's loader refuses the logged model without it (our service does not need it:
        # it loads the same files with skops and an explicit trusted-type list).
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    }
    peers: dict[str, Peer] = {}

    def bento(key: str, title: str, target: str, extra: dict[str, str], settings: dict) -> None:
        port = free_port()
        home = private_bentoml_home(shared_home, work / f"bentoml-home-{key}")
        peers[key] = Peer(
            key,
            title,
            [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            {**train_env, **extra, "BENTOML_HOME": str(home)},
            port,
            "/readyz",
            "/predict",
            our_body(row),
            {"server": f"bentoml serve {target}", **settings},
        )

    grpc_port = str(free_port())
    bento(
        "ours",
        TITLES["ours"],
        OUR_TARGET,
        {"IRIS_GRPC_PORT": grpc_port, "IRIS_GRPC_HOST": "127.0.0.1"},
        {
            "workers": f"cpu_count ({cpus})",
            "threads": "1 (async API)",
            "event_loop": "uvloop, UV_TCP_SINGLE_ACCEPT=1",
            "model_runtime": "onnxruntime (the export made at training), 1 thread; "
            "every core for calls of 1,024 rows or more",
            "access_log": "on (default)",
            "grpc": f"127.0.0.1:{grpc_port}",
            "follow_registry": "on (default, polls every 10 s, without MLflow in workers)",
        },
    )
    for key, loop_env, loop_settings in (
        (
            "loop_on",
            {"IRIS_SHADOW_RATE": "1.0"},
            "capture on (Parquet + prediction index), every request also scored in shadow by "
            "the challenger",
        ),
        ("loop_off", {"IRIS_CAPTURE": "false"}, "capture off, no shadow"),
    ):
        port = str(free_port())
        bento(
            key,
            TITLES[key],
            OUR_TARGET,
            {"IRIS_GRPC_PORT": port, "IRIS_GRPC_HOST": "127.0.0.1", **loop_env},
            {"workers": f"cpu_count ({cpus})", "loop": loop_settings},
        )
    bento(
        "noop",
        TITLES["noop"],
        NOOP_TARGET,
        {},
        {
            "workers": f"cpu_count ({cpus})",
            "threads": "1 (async API)",
            "event_loop": "uvloop, UV_TCP_SINGLE_ACCEPT=1",
            "model": "none",
        },
    )
    port = free_port()
    peers["seed"] = Peer(
        "seed",
        TITLES["seed"],
        [str(BIN / "uvicorn"), SEED_APP, "--host", "127.0.0.1", "--port", str(port)],
        {**train_env, **registry, "SEED_MODEL_URI": CHAMPION_URI},
        port,
        "/health",
        "/predict",
        our_body(row),
        {
            "server": f"uvicorn {SEED_APP}",
            "workers": "1 (uvicorn default)",
            "threads": "sync endpoint in FastAPI's thread pool",
            "model": f"mlflow.pyfunc.load_model({CHAMPION_URI!r}), scikit-learn",
        },
    )
    port = free_port()
    argv = [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local"]
    argv += ["-h", "127.0.0.1", "-p", str(port), "--workers", str(mlflow_workers)]
    peers["mlflow"] = Peer(
        "mlflow",
        TITLES["mlflow"],
        argv,
        {**train_env, **registry},
        port,
        "/health",
        "/invocations",
        mlflow_body(row),
        {
            "server": f"mlflow models serve -m {CHAMPION_URI} --env-manager local",
            "workers": f"{mlflow_workers} uvicorn worker(s)"
            + (" (MLflow's default)" if mlflow_workers == 1 else ""),
            "model": "MLflow pyfunc, scikit-learn",
            "request": "dataframe_split",
        },
    )
    return peers


@dataclass
class Running:
    peer: Peer
    server: Server
    cold_start_s: float
    settled_s: float


@contextlib.contextmanager
def running(peer: Peer, work: Path, timeout_s: float = 180) -> Iterator[Running]:
    """Start ``peer``; yield once its health route answers 200; stop it whatever happens."""
    log_path = work / "logs" / f"{peer.key}.log"
    started = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = start_group(peer.argv, log=log_path, cwd=PROJECT_DIR, env=peer.env)
    server = Server(peer.title, process, peer.url, log_path, peer.env)
    try:
        cold = wait_healthy(server, peer.health_path, started, timeout_s)
        settled = wait_settled(server, started, timeout_s)
        yield Running(peer, server, cold, settled)
    finally:
        stop(server)


def wait_healthy(server: Server, path: str, started: float, timeout_s: float) -> float:
    """Seconds from process start until ``path`` first answers 200 (polled every 50 ms)."""
    deadline = started + timeout_s
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() < deadline:
            if server.process.poll() is not None:
                code = server.process.returncode
                raise RuntimeError(f"{server.name} exited with {code}:\n{server.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(server.url + path).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.05)
    raise TimeoutError(f"{server.name} not healthy after {timeout_s:g} s:\n{server.log()[-3000:]}")


def wait_settled(
    server: Server, started: float, timeout_s: float, window_s: float = 0.5, idle: float = 0.1
) -> float:
    """Seconds from process start until the whole process tree is idle (< 10 % of a core).

    A server can answer its health check before it has finished starting: only one of our
    workers needs to be up for ``/readyz`` while the others are still loading, and MLflow's
    scoring server goes on importing. Load starts after this, so the numbers are the
    steady state.
    """
    deadline = started + timeout_s
    previous = _tree_cpu_s(server)
    while time.perf_counter() < deadline:
        time.sleep(window_s)
        now = _tree_cpu_s(server)
        if now - previous < idle * window_s:
            return time.perf_counter() - started
        previous = now
    raise TimeoutError(f"{server.name} still busy {timeout_s:g} s after start")


def _tree_cpu_s(server: Server) -> float:
    root = psutil.Process(server.process.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def stop(server: Server) -> None:
    """Stop the server's process group, then any process of its tree that is left, by PID."""
    try:
        tree = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    server.stop()
    for proc in tree:  # psutil checks the start time, so a reused PID is never hit
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(tree, timeout=5)


def process_role(proc: psutil.Process, cmdline: str) -> str:
    """What a process of a server's tree is: a worker serves (or is a peer's leaf process),
    a capture sink writes one worker's captures, the rest supervise."""
    if "serving.capture_sink" in cmdline:
        return "capture sink"
    if "resource_tracker" in cmdline:
        return "supervisor"
    if "_bentoml_impl.worker" in cmdline or not proc.children():
        return "worker"
    return "supervisor"


def memory(server: Server) -> dict:
    """VmRSS of every process in the server's tree: workers serve, each with its capture
    sink (``serving.capture_sink``) when capture is on; the rest supervise."""
    root = psutil.Process(server.process.pid)
    procs = [root, *root.children(recursive=True)]
    rows = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = " ".join(proc.cmdline())
            rows.append(
                {
                    "pid": proc.pid,
                    "role": process_role(proc, cmdline),
                    "rss_mib": round(vm_rss_kib(proc.pid) / 1024, 1),
                    "cmdline": cmdline[:160],
                }
            )
    workers = [r["rss_mib"] for r in rows if r["role"] == "worker"]
    return {
        "processes": rows,
        "workers": len(workers),
        "worker_rss_mib": workers,
        "workers_sum_mib": round(sum(workers), 1),
        "capture_sinks_mib": [r["rss_mib"] for r in rows if r["role"] == "capture sink"],
        "total_mib": round(sum(r["rss_mib"] for r in rows), 1),
    }


def connections_per_process(server: Server, port: int) -> dict[str, int]:
    """Established client connections on ``port`` held by each process of the server's tree.

    BentoML's workers share one listening socket, so which worker accepts a connection is up
    to the kernel and timing; a kept-alive connection then stays with that worker.
    """
    root = psutil.Process(server.process.pid)
    counts = {}
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            n = sum(
                1
                for c in proc.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
            )
            if n:
                counts[str(proc.pid)] = n
    return counts


def vm_rss_kib(pid: int) -> int:
    """``VmRSS`` from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
