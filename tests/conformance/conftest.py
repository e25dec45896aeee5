"""The ecosystem's own clients, in a venv of their own, against a real ``bentoml serve``.

``tritonclient`` and ``kserve`` pin protobuf < 7 and the project uses 7, so they cannot
share the project's venv. :func:`client_python` builds a venv from
``tests/conformance/requirements.txt`` (exact versions) once per machine, under
``/var/tmp`` (or ``IRIS_CONFORMANCE_VENV``), keyed by that file's hash, and reuses it.
The client scripts in ``clients/`` run there as subprocesses, talk to the server over
the network only, and print JSON that the tests assert on.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.homes import TrainedHome
from harness.servers import Server, bento_server
from harness.venvs import venv_python

HERE = Path(__file__).resolve().parent
CLIENTS = HERE / "clients"
REQUIREMENTS = HERE / "requirements.txt"
ADMIN_TOKEN = "conformance-admin-token"


@pytest.fixture(scope="session")
def client_python() -> Path:
    """The conformance venv's python (built on first use, then reused across runs)."""
    root = Path(os.environ.get("IRIS_CONFORMANCE_VENV", "/var/tmp/iris-oip-clients"))
    # (tritonclient.grpc and kserve cannot share a process: both register "inference.*".)
    return venv_python(REQUIREMENTS, root, "tritonclient.http, kserve")


@pytest.fixture(scope="session")
def oip_server(
    trained_home: TrainedHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One worker over the session registry, with an admin token for repository calls."""
    env = {**trained_home.env, "IRIS_ADMIN_TOKEN": ADMIN_TOKEN}
    with bento_server(env, tmp_path_factory.mktemp("conformance-logs")) as srv:
        yield srv


def run_client(python: Path, script: str, cfg: dict, tmp_path: Path) -> dict:
    """Run one client script in the conformance venv; its JSON output."""
    path = tmp_path / f"{Path(script).stem}.json"
    path.write_text(json.dumps(cfg))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(CLIENTS)}
    with contextlib.suppress(KeyError):
        env["HOME"] = os.environ["HOME"]
    proc = subprocess.run(
        [str(python), str(CLIENTS / script), str(path)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=CLIENTS,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)
