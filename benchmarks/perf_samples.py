"""Where a server's CPU goes, by process role, thread and library, from Linux ``perf``.

``perf record -e cpu-clock:u`` samples the user-space CPU time of chosen processes, one
sample per millisecond of CPU a thread uses (a fixed period, so a sample count is a CPU
time), the kernel taking each sample: it needs no cooperation from Python and sees native
libraries (ONNX Runtime, Arrow, SQLite, numpy) as what they are. Counting samples by the
library their instruction pointer was in, and dividing by the requests answered
meanwhile, gives CPU µs per request by (role, thread, library): what
``benchmarks.loop_cpu --perf`` compares between its two peers. Kernel time is not sampled
(``:u``); the kernel's own accounting (``benchmarks.loop_cpu``) counts both.

Needs ``perf`` (Debian: ``apt-get install linux-perf``), and root or
``kernel.perf_event_paranoid`` at most 2 (Debian's default, 3, refuses other users).
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PERIOD_NS = 1_000_000
"""One sample per this much CPU time of a thread (1 ms): a fixed period, never throttled
into a lower rate the way ``-F`` can be."""
ATTACH_S = 1.0
"""Time given to perf to attach to every thread before the measured window starts."""
_SAMPLE = re.compile(r"\s*(\d+)/(\d+)\s+\S+\s+\((.*)\)\s*$")


@contextlib.contextmanager
def recording(pids: list[int], path: Path) -> Iterator[None]:
    """Sample the user-space CPU of ``pids`` (all their threads) into ``path`` meanwhile."""
    if shutil.which("perf") is None:
        raise RuntimeError("--perf needs Linux perf on PATH (Debian: apt-get install linux-perf)")
    if not pids:
        raise RuntimeError("perf: no process to sample")
    path.unlink(missing_ok=True)  # perf would keep it as .old, and a failed run look fine
    argv = ["perf", "record", "-q", "-e", "cpu-clock:u", "-c", str(PERIOD_NS), "-o", str(path)]
    perf = subprocess.Popen(
        [*argv, "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(ATTACH_S)
        yield
    finally:
        perf.send_signal(signal.SIGINT)  # perf writes its file and exits
        try:
            _, err = perf.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.communicate()
            raise
    if perf.returncode not in (0, -signal.SIGINT) or not path.exists() or not path.stat().st_size:
        raise RuntimeError(f"perf record failed ({perf.returncode}): {err.strip()}")


def seconds_by_library(path: Path, roles: dict[int, str]) -> dict[tuple[str, str, str], float]:
    """CPU seconds sampled in ``path``, by (role, ``main`` or ``other`` thread, library);
    ``roles`` names each sampled pid."""
    out = subprocess.run(
        ["perf", "script", "-i", str(path), "-F", "pid,tid,ip,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return count_samples(out, roles)


def count_samples(script: str, roles: dict[int, str]) -> dict[tuple[str, str, str], float]:
    """``perf script -F pid,tid,ip,dso`` output, one sample a line, as CPU seconds by
    (role, thread, library): a process's main thread is the one whose id is its pid."""
    counts: collections.Counter = collections.Counter()
    for line in script.splitlines():
        found = _SAMPLE.match(line)
        if found is None:
            continue
        pid, tid, dso = found.groups()
        thread = "main" if pid == tid else "other"
        counts[roles.get(int(pid), "other process"), thread, _library(dso)] += 1
    return {key: n * PERIOD_NS / 1e9 for key, n in counts.items()}


def _library(dso: str) -> str:
    """A shared object's short name; an extension module's keeps its package
    (``pyarrow/lib``, not ``lib``)."""
    folder, _, name = dso.rpartition("/")
    if ".cpython-" not in name:
        return name or "[unknown]"
    return f"{folder.rpartition('/')[2]}/{name.split('.cpython-', 1)[0]}"
