"""A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's postgresql package), for tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.processes import free_port


def pg_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the package's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """initdb + pg_ctl start a cluster in a temp folder; yields a database URI; always stops it.

    Skips when PostgreSQL is not installed (fails under CI, where .ci/run installs it).
    """
    binaries = pg_bin()
    if binaries is None:
        message = "PostgreSQL server not installed (apt-get install postgresql)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="iris-pg-"))
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")

    def run(*argv: str) -> None:
        command = _as_postgres([str(binaries / argv[0]), *argv[1:]])
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    started = False
    try:
        run("initdb", "-D", str(data), "--auth=trust", "-U", "postgres", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
        started = True
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            subprocess.run(
                _as_postgres(
                    [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def server_processes(uri: str) -> list:
    """The processes of the test cluster serving ``uri`` (its postmaster and every child:
    backends and background workers), found by the port in the postmaster's command line."""
    import psutil
    import sqlalchemy as sa

    port = str(sa.engine.make_url(uri).port)
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        named = proc.info["name"] == "postgres" and "-p" in cmdline
        if named and cmdline[cmdline.index("-p") + 1] == port:
            return [proc, *proc.children(recursive=True)]
    raise LookupError(f"no PostgreSQL postmaster on port {port}")
