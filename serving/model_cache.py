"""Get a registry version onto this server's disk once, for every worker to load from.

When the champion (or challenger) moves to a version this server does not hold, the first
worker to notice takes an exclusive file lock and runs one fetch subprocess
(``python -m serving.fetch_model``: download, safe load, ONNX export made sure of) into
``$IRIS_HOME/var/models/<version>-<run>/``. The other workers wait on the lock, then find
the folder there and load it: one download per server, not one per worker. A version the
fetch refused leaves a short-lived marker, so the others do not fetch it again either.

Why not the BentoML store: its ``latest`` is what a restarted worker and ``bentoml build``
load, and fetching a challenger must not change that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.child_env import fetch_env
from serving.fetch_model import MISSING_EXIT, REFUSED_EXIT
from training.schema import store_tag
from training.settings import PROJECT_DIR, Settings

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 300.0
RETRY_REFUSED_S = 300.0
"""A version that cannot be served (tampered, broken) is tried again after this long, not at
every poll: each try starts a subprocess that imports MLflow."""
RETRY_FAILED_S = 30.0
"""After a failure that may pass (registry or network down mid-download, a timeout)."""
KEEP = 3
"""Fetched versions kept on disk (the newest); older ones are removed at the next fetch."""
FAILED_SUFFIX = ".failed"
_HEX = re.compile(r"[0-9a-f]*")

_fetches: set[subprocess.Popen] = set()
_fetches_lock = threading.Lock()


class FetchError(RuntimeError):
    """The fetch subprocess could not get a version ready; the message says why.

    ``permanent`` is True when the version itself was refused (retrying will not help).
    ``missing`` is True when the registry has no such version.
    """

    def __init__(self, message: str, *, permanent: bool = False, missing: bool = False):
        super().__init__(message)
        self.permanent = permanent
        self.missing = missing


def cache_dir(settings: Settings) -> Path:
    return settings.home / "var" / "models"


def fetched(settings: Settings, version: str, run_id: str) -> Path:
    """The folder of registry ``version`` on this server, fetched now if no one has yet.

    A failed fetch is remembered on disk (``RETRY_REFUSED_S`` for a refused version,
    ``RETRY_FAILED_S`` otherwise), so the other workers do not repeat it.

    Raises:
        FetchError: the fetch failed (here, or recently in another worker).
    """
    if not (version.isascii() and version.isdigit()) or not _HEX.fullmatch(run_id):
        raise FetchError(f"no version {version!r} (run {run_id!r})", missing=True)
    cache = cache_dir(settings)
    dest = cache / store_tag(version, run_id)
    if dest.is_dir():
        _touch(dest)
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache / ".fetch.lock") as lock_fd:
        if dest.is_dir():  # another worker fetched it while this one waited
            logger.info("v%s was fetched by another worker; loading it", version)
            _touch(dest)
            return dest
        _raise_recent_failure(dest)
        _prune(cache, keep=KEEP - 1)  # room for this one; under the lock, leftovers are garbage
        try:
            # The child holds the lock too: if this worker dies, no other fetch starts
            # while the child still writes.
            fetch(settings.model_name, version, dest, fetch_env(settings), hold_fd=lock_fd)
        except FetchError as e:
            _record_failure(dest, e)
            raise
    return dest


def fetch(
    name: str,
    version: str,
    dest: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
    hold_fd: int | None = None,
) -> Path:
    """Download ``name`` version ``version`` to ``dest`` in a subprocess, checked and exported.

    ``env`` is the subprocess's whole environment (:func:`serving.child_env.fetch_env`).

    Raises:
        FetchError: the subprocess failed or timed out (its one-line reason is the message).
    """
    argv = [sys.executable, "-m", "serving.fetch_model", name, version, str(dest)]
    proc = subprocess.Popen(
        argv,
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=() if hold_fd is None else (hold_fd,),
    )
    with _fetches_lock:
        _fetches.add(proc)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise FetchError(f"fetching v{version} took over {timeout_s:g} s") from None
    finally:
        with _fetches_lock:
            _fetches.discard(proc)
    if proc.returncode != 0 or not dest.is_dir():
        lines = (stderr or "").strip().splitlines()
        message = lines[-1] if lines else f"fetch exited with {proc.returncode}"
        raise FetchError(
            message,
            permanent=proc.returncode == REFUSED_EXIT,
            missing=proc.returncode == MISSING_EXIT,
        )
    return dest


def stop_fetches() -> None:
    """Terminate fetch subprocesses still running (the worker is shutting down)."""
    with _fetches_lock:
        running = list(_fetches)
    for proc in running:
        proc.terminate()


@contextmanager
def _exclusive(path: Path) -> Iterator[int]:
    """An exclusive lock on ``path``, held until every process with the descriptor closes it
    (released by the kernel even when they are killed). Yields the descriptor."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle.fileno()


def mark_held(settings: Settings, folder: Path | None) -> None:
    """Mark a fetched version a worker holds as just used, at every poll: the capture sink
    loads its challenger from this folder (again when it restarts), so pruning must keep
    it, however many versions were fetched since. A folder outside the cache (the
    BentoML store's) is left alone."""
    if folder is not None and folder.parent == cache_dir(settings):
        _touch(folder)


def _touch(folder: Path) -> None:
    """Mark a folder as just used, so pruning keeps what workers serve."""
    with contextlib.suppress(OSError):
        os.utime(folder)


def _record_failure(dest: Path, error: FetchError) -> None:
    marker = {
        "at": time.time(),
        "message": str(error),
        "permanent": error.permanent,
        "missing": error.missing,
    }
    dest.with_name(dest.name + FAILED_SUFFIX).write_text(json.dumps(marker))


def _raise_recent_failure(dest: Path) -> None:
    """Re-raise another worker's fetch failure of the same version, while it is recent."""
    marker = dest.with_name(dest.name + FAILED_SUFFIX)
    try:
        failure = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    window = RETRY_REFUSED_S if failure.get("permanent") else RETRY_FAILED_S
    if time.time() - failure.get("at", 0) < window:
        raise FetchError(
            str(failure.get("message", "fetch failed")),
            permanent=bool(failure.get("permanent")),
            missing=bool(failure.get("missing")),
        )
    marker.unlink(missing_ok=True)


def _prune(cache: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used fetched versions (workers hold theirs
    in memory), and what killed fetches left behind (called under the lock)."""
    for partial in cache.glob(".*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    folders = sorted(
        (p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("Removed fetched model %s (keeping the %d newest)", old.name, keep)
    for marker in cache.glob(f"*{FAILED_SUFFIX}"):
        if time.time() - marker.stat().st_mtime > RETRY_REFUSED_S:
            marker.unlink(missing_ok=True)
