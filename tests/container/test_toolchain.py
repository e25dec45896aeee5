"""Smoke test of the container toolchain with a throwaway Bento (not the real service).

Builds a one-endpoint Bento in a temporary BentoML home, containerizes it with
scripts/container/build.sh (Docker, or buildah with the stand-in base image), runs it,
and checks the API, ``-e`` variables, the non-root user, logs and clean-up. With a warm
base image and layer cache this takes seconds; from scratch about two minutes, most of
it the base image and the apt layer that the real service's image then reuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.utils import containers as ct

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

SERVICE = """
import os

import bentoml


@bentoml.service
class ToolchainSmoke:
    @bentoml.api
    def echo(self, x: float) -> dict:
        return {"double": 2 * x, "greeting": os.environ.get("SMOKE_GREETING", "")}
"""

BENTOFILE = """
service: "service:ToolchainSmoke"
name: toolchain_smoke
include:
  - "service.py"
"""


@pytest.fixture(scope="module")
def backend() -> ct.Backend:
    return ct.require_backend()


@pytest.fixture(scope="module")
def smoke_image(backend: ct.Backend, tmp_path_factory: pytest.TempPathFactory) -> str:
    src = tmp_path_factory.mktemp("smoke-src")
    home = tmp_path_factory.mktemp("smoke-bentoml")
    (src / "service.py").write_text(SERVICE)
    (src / "bentofile.yaml").write_text(BENTOFILE)
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    subprocess.run(
        [bentoml, "build"],
        cwd=src,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        check=True,
        timeout=300,
    )
    return ct.containerize(
        backend, "toolchain_smoke:latest", "iris-toolchain-smoke:test", bentoml_home=home
    )


def test_container_serves_the_api_as_a_non_root_user(backend: ct.Backend, smoke_image: str) -> None:
    with ct.run_container(backend, smoke_image, env={"SMOKE_GREETING": "hi there"}) as ctr:
        resp = httpx.post(f"{ctr.base_url}/echo", json={"x": 2.5}, timeout=10)
        assert resp.status_code == 200
        assert resp.json() == {"double": 5.0, "greeting": "hi there"}

        assert ctr.exec("id", "-un").stdout.strip() == "bentoml"
        assert ctr.exec("id", "-u").stdout.strip() != "0"
        assert "path=/echo" in ctr.logs()
        name = ctr.name

    assert backend.command("inspect", name, check=False).returncode != 0, "not removed"


def test_container_is_removed_when_it_never_gets_ready(
    backend: ct.Backend, smoke_image: str
) -> None:
    # An unknown serve option makes bentoml exit at once: the wait must end early.
    name = f"iris-test-never-ready-{uuid.uuid4().hex[:8]}"
    with (
        pytest.raises(TimeoutError, match="exited within"),
        ct.run_container(backend, smoke_image, name=name, serve_args=["--no-such-option"]),
    ):
        pass
    assert backend.command("inspect", name, check=False).returncode != 0, "not removed"
