"""Build and run the service's OCI image from tests, with Docker or with buildah + podman.

The shell scripts in ``scripts/container/`` do the work (one recipe for people, CI and
tests); this module picks a backend, calls them, and runs containers that are always
removed afterwards. Typical use::

    backend = require_backend()  # skip here, fail under CI=true, if nothing can build
    image = containerize(backend, "iris_classifier:latest", "iris-classifier:test",
                         bentoml_home=home)
    with run_container(backend, image, env={"IRIS_LOG_LEVEL": "debug"}) as ctr:
        httpx.post(f"{ctr.base_url}/predict", json=...)
        ctr.exec("id", "-u")
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.processes import free_port

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts" / "container"
CONTAINER_PORT = 3000  # BentoServer's port inside the image
_TRUE = {"1", "true", "yes"}
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ToolchainUnavailableError(RuntimeError):
    """Nothing on this machine can build and run OCI images."""


@dataclass(frozen=True)
class Backend:
    """How to build (``build_backend``) and run (``cli``) images on this machine.

    ``env`` is the environment for every subprocess: for podman it carries the project's
    ``CONTAINERS_CONF``/``CONTAINERS_STORAGE_CONF`` from ``scripts/container/env.sh``.
    """

    cli: Literal["docker", "podman"]
    build_backend: Literal["docker", "buildah"]
    env: Mapping[str, str]

    def command(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<cli> ARGS`` and return the completed process (text output)."""
        return subprocess.run(
            [self.cli, *args],
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


def in_ci() -> bool:
    """True when the ``CI`` variable says we run under CI (``CI=true`` here and on GitHub)."""
    return os.environ.get("CI", "").strip().lower() in _TRUE


def unavailable(reason: str, what: str = "container toolchain") -> None:
    """Skip the current test, or fail it under CI, where a missing tool is a bug.

    Raises:
        pytest.skip.Exception: outside CI.
        pytest.fail.Exception: under CI.
    """
    import pytest

    if in_ci():
        pytest.fail(f"{what} required under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _succeeds(argv: Sequence[str], env: Mapping[str, str], timeout: float = 30) -> bool:
    try:
        return (
            subprocess.run(
                argv, env=dict(env), capture_output=True, timeout=timeout, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def podman_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus what ``env.sh`` exports."""
    env = dict(os.environ if base is None else base)
    out = subprocess.run(
        ["bash", "-c", f'. "{SCRIPTS / "env.sh"}" && env -0'],
        env=env,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def detect_backend(env: Mapping[str, str] | None = None) -> Backend:
    """Pick the Docker engine when ``docker info`` works, else podman + buildah.

    Args:
        env: environment to look in (``PATH`` included); default: this process's.

    Raises:
        ToolchainUnavailableError: neither a running Docker engine nor podman + buildah + runc.
    """
    env = dict(os.environ if env is None else env)
    path = env.get("PATH")
    if shutil.which("docker", path=path) and _succeeds(["docker", "info"], env):
        return Backend(cli="docker", build_backend="docker", env=env)
    missing = [t for t in ("podman", "buildah", "runc") if not shutil.which(t, path=path)]
    if missing:
        raise ToolchainUnavailableError(
            f"no running Docker engine and no {', '.join(missing)}: "
            f"run scripts/container/install-toolchain.sh"
        )
    env = podman_env(env)
    if not _succeeds(["podman", "info"], env, timeout=60):
        raise ToolchainUnavailableError("`podman info` fails with scripts/container/env.sh")
    return Backend(cli="podman", build_backend="buildah", env=env)


def require_backend() -> Backend:
    """:func:`detect_backend` for tests: skips (fails under CI) when there is none."""
    try:
        return detect_backend()
    except ToolchainUnavailableError as exc:
        unavailable(str(exc))
        raise  # unreachable: unavailable() always raises


def ensure_base_image(backend: Backend, timeout: float = 900) -> None:
    """Build the stand-in ``python:3.11-slim`` if it is missing (podman only; Docker pulls).

    Raises:
        subprocess.CalledProcessError: the build failed (its output is in the exception).
    """
    if backend.cli == "podman":
        _run_script("base-image.sh", [], backend.env, timeout)


def containerize(
    backend: Backend,
    bento_tag: str,
    image: str,
    *,
    bentoml_home: Path | None = None,
    timeout: float = 1800,
) -> str:
    """Build ``image`` from ``bento_tag`` with ``scripts/container/build.sh``.

    Args:
        backend: from :func:`detect_backend`.
        bento_tag: a Bento in the store, e.g. ``iris_classifier:latest``.
        image: ``name:tag`` to give the image.
        bentoml_home: the store to read (default: the environment's ``BENTOML_HOME``).
        timeout: seconds for the whole build, base image included.

    Returns:
        The reference to run: ``localhost/name:tag`` for podman, ``name:tag`` for Docker.
    """
    env = dict(backend.env)
    env["CONTAINER_BACKEND"] = backend.build_backend
    env.setdefault("BENTOML", str(Path(sys.executable).with_name("bentoml")))
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    _run_script("build.sh", [bento_tag, image], env, timeout)
    return qualified_image(backend, image)


def _run_script(name: str, args: Sequence[str], env: Mapping[str, str], timeout: float) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    logger.info("%s %s: %.0f s", name, " ".join(args), time.monotonic() - started)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)


def qualified_image(backend: Backend, image: str) -> str:
    """The name podman stores a short ``name:tag`` under (``localhost/``); Docker's as is."""
    first = image.split("/", 1)[0]
    has_registry = "/" in image and ("." in first or ":" in first or first == "localhost")
    return image if backend.cli == "docker" or has_registry else f"localhost/{image}"


def env_args(env: Mapping[str, str]) -> list[str]:
    """``-e KEY=VALUE`` pairs for ``run``.

    Raises:
        ValueError: a key that is not a shell-style variable name.
    """
    args: list[str] = []
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"not an environment variable name: {key!r}")
        args += ["-e", f"{key}={value}"]
    return args


def run_argv(
    backend: Backend,
    image: str,
    *,
    name: str,
    port: int,
    env: Mapping[str, str] | None = None,
    serve_args: Sequence[str] = (),
    cidfile: Path | None = None,
) -> list[str]:
    """The ``run`` command line: the API on 127.0.0.1:``port`` of the host.

    podman uses the host's network (no CNI set-up needed) and binds the server to
    127.0.0.1 itself; Docker publishes the container's port 3000 on 127.0.0.1 only.
    ``cidfile`` receives the new container's id as soon as it exists.
    """
    extra = env_args(env or {})
    if cidfile is not None:
        extra = ["--cidfile", str(cidfile), *extra]
    if backend.cli == "podman":
        net = ["--network", "host"]
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        net = ["-p", f"127.0.0.1:{port}:{CONTAINER_PORT}"]
        serve = ["serve", "--port", str(CONTAINER_PORT)]
    return [backend.cli, "run", "-d", "--name", name, *net, *extra, image, *serve, *serve_args]


@dataclass(frozen=True)
class RunningContainer:
    """A container started by :func:`run_container`; gone when the ``with`` block ends."""

    backend: Backend
    name: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exec(
        self, *argv: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container; returns the completed process."""
        return self.backend.command("exec", self.name, *argv, timeout=timeout, check=check)

    def logs(self) -> str:
        """Everything the container wrote so far, stdout and stderr together."""
        proc = self.backend.command("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def is_running(self) -> bool:
        proc = self.backend.command(
            "inspect", "--format", "{{.State.Running}}", self.name, check=False
        )
        return proc.stdout.strip() == "true"

    def wait_ready(self, timeout: float = 120) -> None:
        """Poll ``/readyz`` until it answers 200.

        Raises:
            TimeoutError: not ready in time, or the container stopped (logs included).
        """
        if not wait_http_ok(f"{self.base_url}/readyz", timeout, alive=self.is_running):
            what = "not ready after" if self.is_running() else "exited within"
            raise TimeoutError(
                f"container {self.name} {what} {timeout:.0f} s; logs:\n{self.logs()[-4000:]}"
            )


def wait_http_ok(
    url: str,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.5,
) -> bool:
    """Poll ``url`` until it answers 200; False after ``timeout`` s or once ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=min(5.0, timeout)) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline or (alive is not None and not alive()):
            return False
        time.sleep(interval)


@contextlib.contextmanager
def run_container(
    backend: Backend,
    image: str,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    name: str | None = None,
    serve_args: Sequence[str] = (),
    ready_timeout: float | None = 120,
) -> Iterator[RunningContainer]:
    """Start ``image`` serving on 127.0.0.1, wait for ``/readyz``, always remove it.

    Args:
        backend: from :func:`detect_backend`.
        image: as returned by :func:`containerize`.
        env: variables passed with ``-e KEY=VALUE`` (not baked into the image).
        port: host port; default: a free one.
        name: container name; default: ``iris-test-<random>``.
        serve_args: extra arguments for ``bentoml serve``.
        ready_timeout: seconds to wait for ``/readyz``; None yields without waiting.

    Yields:
        The running container. On exit the container this call created is removed, by
        the id that ``--cidfile`` recorded: never another container with the same name.

    Raises:
        RuntimeError: ``run`` failed (e.g. the name is taken).
        TimeoutError: not ready in time, or exited (its logs are in the message).
    """
    name = name or f"iris-test-{uuid.uuid4().hex[:10]}"
    container = RunningContainer(backend, name, port or free_port())
    with tempfile.TemporaryDirectory(prefix="iris-cid-") as tmp:
        cidfile = Path(tmp, "cid")
        argv = run_argv(
            backend,
            image,
            name=name,
            port=container.port,
            env=env,
            serve_args=serve_args,
            cidfile=cidfile,
        )
        try:
            proc = subprocess.run(
                argv, env=dict(backend.env), capture_output=True, text=True, timeout=120
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr}")
            if ready_timeout is not None:
                container.wait_ready(ready_timeout)
            yield container
        finally:
            cid = cidfile.read_text().strip() if cidfile.exists() else ""
            if cid:
                backend.command("rm", "-f", cid, timeout=120, check=False)
