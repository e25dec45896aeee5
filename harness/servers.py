"""Start real servers (``bentoml serve``, ``mlflow server``) for tests and always stop them.

Each server runs in its own process group, bound to 127.0.0.1 on a free port; ``stop``
terminates exactly that group (never anything the test did not start).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import free_port, start_group, stop_group, wait_http_ok

PROJECT_DIR = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def descendants(pid: int) -> list[int]:
    """All live descendant PIDs of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(server: Server) -> list[int]:
    """PIDs of the BentoML worker processes of a `bentoml serve` we started."""
    return sorted(
        p for p in descendants(server.process.pid) if "_bentoml_impl.worker" in cmdline(p)
    )


def capture_sink_pids(server: Server) -> dict[int, int]:
    """``{worker pid: capture sink pid}`` of a `bentoml serve` we started."""
    return {
        int(cmdline(p).split()[-1]): p
        for p in descendants(server.process.pid)
        if "serving.capture_sink" in cmdline(p)
    }


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_target(self) -> str:
        """host:port of the server's gRPC (Open Inference Protocol) endpoint."""
        return f"127.0.0.1:{self.env['IRIS_GRPC_PORT']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15) -> None:
        """Stop the server's process group (workers and any retrain child included)."""
        stop_group(self.process, grace_s=timeout)


def private_bentoml_home(shared: Path, private: Path) -> Path:
    """A BENTOML_HOME that shares the model and Bento stores but nothing else.

    `bentoml serve` wipes BENTOML_HOME/prometheus_multiproc_dir at start, so two servers
    on one home would erase each other's metrics.
    """
    private.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        if not (private / store).exists():
            (private / store).symlink_to(shared / store)
    return private


def start_bento(
    env: dict[str, str], log_dir: Path, *, target: str = "service:IrisClassifier", workers: int = 1
) -> Server:
    """Start ``bentoml serve TARGET`` on a free port without waiting; the caller stops it."""
    port = free_port()
    env = {
        "IRIS_GRPC_PORT": str(free_port()),  # a port of its own: workers share it via SO_REUSEPORT
        **env,
        "BENTOML_HOME": str(
            private_bentoml_home(Path(env["BENTOML_HOME"]), log_dir / f"home-{port}")
        ),
        "IRIS_GRPC_HOST": "127.0.0.1",
        "BENTOML_CONFIG_OPTIONS": f"services.iris_classifier.workers={workers}",
    }
    argv = [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    log_path = log_dir / f"bentoml-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = start_group(argv, log=log_path, cwd=PROJECT_DIR, env=env)
    return Server("bentoml serve", process, f"http://127.0.0.1:{port}", log_path, env)


@contextlib.contextmanager
def bento_server(
    env: dict[str, str], log_dir: Path, *, target: str = "service:IrisClassifier", workers: int = 1
) -> Iterator[Server]:
    """``bentoml serve TARGET`` on a free port; yields once ``/readyz`` answers."""
    server = start_bento(env, log_dir, target=target, workers=workers)
    try:
        wait_http_ok(
            server.url + "/readyz",
            proc=server.process,
            timeout_s=90,
            describe=lambda: server.log()[-4000:],
        )
        yield server
    finally:
        server.stop()
