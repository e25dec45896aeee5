"""A real ``mlflow server`` on 127.0.0.1 for integration tests."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.cli import tail
from harness.processes import free_port, start_group, stop_group, wait_http_ok

STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MlflowServer:
    url: str
    backend_uri: str
    artifacts: Path
    """Folder behind ``--artifacts-destination``: artifacts proxied by the server land here."""
    log: Path


@contextlib.contextmanager
def mlflow_server(root: Path, *, port: int = 0, backend_uri: str = "") -> Iterator[MlflowServer]:
    """Run ``mlflow server`` (SQLite backend, proxied artifacts) until the block exits.

    The server is stopped by its process id even when the block raises. Its background job
    runner (a pool of huey consumers) is switched off: it only serves MLflow's GenAI jobs,
    costs seconds at startup, and is not part of the tracking/registry API used here.

    Args:
        root: Folder for the database, the artifacts and ``server.log``. Starting a server
            again on the same ``root`` and ``port`` brings the same registry back.
        port: Port to listen on (default: a free one).
        backend_uri: Backend store (default: SQLite in ``root``), e.g. PostgreSQL.

    Yields:
        The running server, already answering ``/health``.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = MlflowServer(
        url=f"http://127.0.0.1:{port}",
        backend_uri=backend_uri or f"sqlite:///{root / 'server.db'}",
        artifacts=root / "artifacts",
        log=root / "server.log",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", server.backend_uri,
        "--artifacts-destination", str(server.artifacts),
        "--serve-artifacts",
    ]  # fmt: skip
    proc = start_group(cmd, log=server.log, cwd=root, env=env)
    try:
        wait_http_ok(
            f"{server.url}/health",
            proc=proc,
            timeout_s=STARTUP_TIMEOUT_S,
            describe=lambda: tail(server.log.read_text(errors="replace")),
        )
        yield server
    finally:
        stop_group(proc)
