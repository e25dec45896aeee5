"""Start servers as process groups and always stop them by their own id (and stub HTTP
servers in a thread, for tests of clients)."""

from __future__ import annotations

import contextlib
import http.server
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

_next_port: dict[int, int] = {}


def free_port() -> int:
    """A free TCP port on 127.0.0.1, from a range of this pytest-xdist worker's own.

    Servers bind their ports seconds after we pick them; with ports from the kernel's
    shared ephemeral range, two workers could pick the same one in that window. Each
    worker draws from its own block below the ephemeral range (which starts at 32768),
    walking it in order from a random start, so two calls in one process never hand out
    the same port (a server's HTTP and gRPC ports were once drawn equal) until the walk
    wraps after 2,000 ports.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = 20000 + 2000 * (int(worker) % 6 if worker.isdigit() else 0)
    offset = _next_port.get(block, random.randrange(2000))
    for step in range(2000):
        port = block + (offset + step) % 2000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_port[block] = (offset + step + 1) % 2000
        return port
    raise RuntimeError(f"no free port in {block}-{block + 2000}")


def start_group(cmd: list[str], *, log: Path, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group, output appended to ``log``.

    Servers fork workers (mlflow server runs uvicorn in a child); a group lets
    :func:`stop_group` stop all of them through the one id we started.
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the group led by ``proc`` (our own child), SIGKILL whatever outlives ``grace_s``."""
    pgid = proc.pid  # start_new_session made our child the group leader
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pgid, proc):
        time.sleep(0.1)
    if _group_alive(pgid, proc):
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int, proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader so that it does not linger as a zombie
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_http_ok(
    url: str,
    *,
    proc: subprocess.Popen,
    timeout_s: float,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits.

    Raises:
        RuntimeError: the process died or the URL never answered in time; the message
            ends with ``describe()`` (typically the server's log tail).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}\n{describe()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.25)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s ({last})\n{describe()}")


@contextlib.contextmanager
def serve_in_thread(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stub HTTP server on a free 127.0.0.1 port, in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
