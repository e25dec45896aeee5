"""A real HAProxy (Debian's package) on 127.0.0.1 in front of test replicas.

The configuration is written from ``haproxy.cfg.tmpl`` with a free port; the runtime API
(a UNIX socket in the test's folder) reads per-replica statistics and points a server
slot at a new replica, as a rolling update needs.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

import pytest

from harness.processes import free_port, start_group, stop_group, wait_http_ok

TEMPLATE = Path(__file__).with_name("haproxy.cfg.tmpl")


def haproxy_bin() -> str | None:
    """Debian installs it in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


@dataclass
class Balancer:
    url: str
    admin_socket: Path
    log: Path

    def command(self, line: str) -> str:
        """One runtime-API command; returns HAProxy's answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend's servers, by server name."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(line for line in text.splitlines() if line)
        return {
            r["svname"]: r
            for r in rows
            if r["pxname"] == "replicas" and r["svname"] not in ("BACKEND", "FRONTEND")
        }

    def status(self, name: str) -> str:
        return self.stats()[name]["status"]

    def wait_status(self, name: str, wanted: str, timeout: float = 30) -> float:
        """Wait until server ``name`` is ``UP`` or ``DOWN``; returns the seconds it took."""
        started = time.monotonic()
        while (status := self.status(name)) != wanted:
            assert time.monotonic() - started < timeout, f"{name} still {status}"
            time.sleep(0.05)
        return time.monotonic() - started

    def point(self, name: str, url: str) -> None:
        """Send server slot ``name``'s traffic (and health checks) to ``url``."""
        parts = urlsplit(url)
        answer = self.command(f"set server replicas/{name} addr {parts.hostname} port {parts.port}")
        assert "changed" in answer or "no need to change" in answer, answer


@contextlib.contextmanager
def haproxy(replicas: dict[str, str], root: Path) -> Iterator[Balancer]:
    """HAProxy balancing over ``replicas`` (server name -> base URL) until the block exits.

    Skips when HAProxy is not installed (fails under CI, where .ci/run installs it).
    """
    binary = haproxy_bin()
    if binary is None:
        message = "HAProxy not installed (apt-get install haproxy)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(
        f"    server {name} {urlsplit(url).netloc}" for name, url in replicas.items()
    )
    # A UNIX socket path must fit in 108 bytes: keep it short, whatever ``root`` is.
    sockets = Path(tempfile.mkdtemp(prefix="iris-haproxy-"))
    balancer = Balancer(f"http://127.0.0.1:{port}", sockets / "admin.sock", root / "haproxy.log")
    config = root / "haproxy.cfg"
    config.write_text(
        Template(TEMPLATE.read_text()).substitute(
            admin_socket=balancer.admin_socket, port=port, servers=servers
        )
    )
    proc = start_group([binary, "-db", "-f", str(config)], log=balancer.log)
    try:
        wait_http_ok(
            balancer.url + "/readyz",
            proc=proc,
            timeout_s=30,
            describe=lambda: balancer.log.read_text(errors="replace")[-3000:],
        )
        for name in replicas:
            balancer.wait_status(name, "UP")
        yield balancer
    finally:
        stop_group(proc)
        shutil.rmtree(sockets, ignore_errors=True)
