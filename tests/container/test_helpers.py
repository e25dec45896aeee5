"""The container helpers' logic, without building or running anything."""

from __future__ import annotations

import http.server
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.processes import serve_in_thread
from tests.utils import containers as ct

PODMAN = ct.Backend(cli="podman", build_backend="buildah", env={})
DOCKER = ct.Backend(cli="docker", build_backend="docker", env={})


def test_env_args_pairs_each_variable_with_dash_e() -> None:
    assert ct.env_args({"A": "1", "B_2": "x=y z"}) == ["-e", "A=1", "-e", "B_2=x=y z"]


@pytest.mark.parametrize("key", ["", "1A", "A-B", "A B", "A=B"])
def test_env_args_rejects_names_that_are_not_variables(key: str) -> None:
    with pytest.raises(ValueError, match="not an environment variable name"):
        ct.env_args({key: "v"})


@pytest.mark.parametrize(
    ("image", "podman_ref"),
    [
        ("iris-classifier:abc", "localhost/iris-classifier:abc"),
        ("team/iris:1", "localhost/team/iris:1"),
        ("localhost/iris:1", "localhost/iris:1"),
        ("ghcr.io/org/iris:1", "ghcr.io/org/iris:1"),
        ("registry:5000/iris:1", "registry:5000/iris:1"),
    ],
)
def test_qualified_image(image: str, podman_ref: str) -> None:
    assert ct.qualified_image(PODMAN, image) == podman_ref
    assert ct.qualified_image(DOCKER, image) == image


def test_podman_runs_on_the_host_network_bound_to_loopback() -> None:
    argv = ct.run_argv(
        PODMAN, "localhost/i:1", name="n", port=4567, env={"K": "V"}, cidfile=Path("/t/cid")
    )
    assert argv == [
        "podman", "run", "-d", "--name", "n", "--network", "host",
        "--cidfile", "/t/cid", "-e", "K=V",
        "localhost/i:1", "serve", "--host", "127.0.0.1", "--port", "4567",
    ]  # fmt: skip


def test_docker_publishes_port_3000_on_loopback_only() -> None:
    argv = ct.run_argv(DOCKER, "i:1", name="n", port=4567, serve_args=["--workers", "2"])
    assert argv == [
        "docker", "run", "-d", "--name", "n", "-p", "127.0.0.1:4567:3000",
        "i:1", "serve", "--port", "3000", "--workers", "2",
    ]  # fmt: skip


def test_free_port_can_be_bound() -> None:
    import socket

    port = ct.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


class _FlakyReadyz(http.server.BaseHTTPRequestHandler):
    """503 for the first two requests, then 200: a server that is still starting."""

    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        self.send_response(200 if type(self).calls > 2 else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[str]:
    _FlakyReadyz.calls = 0
    with serve_in_thread(_FlakyReadyz) as url:
        yield f"{url}/readyz"


def test_wait_http_ok_retries_until_200(flaky_server: str) -> None:
    assert ct.wait_http_ok(flaky_server, timeout=10, interval=0.05)
    assert _FlakyReadyz.calls == 3


def test_wait_http_ok_gives_up_after_timeout() -> None:
    url = f"http://127.0.0.1:{ct.free_port()}/readyz"  # nothing listens there
    assert not ct.wait_http_ok(url, timeout=0.3, interval=0.05)


def test_wait_http_ok_stops_when_the_container_is_gone() -> None:
    url = f"http://127.0.0.1:{ct.free_port()}/readyz"
    assert not ct.wait_http_ok(url, timeout=60, alive=lambda: False)


def _tool(folder: Path, name: str, exit_code: int) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_detect_backend_prefers_a_running_docker_engine(tmp_path: Path) -> None:
    _tool(tmp_path, "docker", 0)
    for name in ("podman", "buildah", "runc"):
        _tool(tmp_path, name, 0)
    backend = ct.detect_backend({"PATH": str(tmp_path)})
    assert (backend.cli, backend.build_backend) == ("docker", "docker")


def test_detect_backend_without_engine_or_podman_names_the_fix(tmp_path: Path) -> None:
    _tool(tmp_path, "docker", 1)  # a client without a daemon, as on our machines
    _tool(tmp_path, "buildah", 0)
    with pytest.raises(ct.ToolchainUnavailableError, match=r"podman, runc.*install-toolchain"):
        ct.detect_backend({"PATH": str(tmp_path)})


def test_missing_toolchain_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no podman"):
        ct.unavailable("no podman")


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_missing_toolchain_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="required under CI: no podman"):
        ct.unavailable("no podman")
