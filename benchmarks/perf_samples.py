"""Where a server's CPU goes, by process role, thread and library, from Linux ``perf``.

``perf record -e cpu-clock:u`` samples the user-space CPU time of chosen processes at a
fixed rate, the kernel taking each sample, so it needs no cooperation from Python and
sees native libraries (ONNX Runtime, Arrow, SQLite, numpy) as what they are. Counting
samples by the library their instruction pointer was in, and dividing by the requests
answered meanwhile, gives CPU µs per request by (role, thread, library): what
``benchmarks.loop_cpu --perf`` compares between its two peers. Kernel time is not
sampled (``perf_event_paranoid`` 2, the default, allows user space only); the kernel's
own accounting (``benchmarks.loop_cpu`` without ``--perf``) counts both.

Needs ``perf`` (Debian: ``apt-get install linux-perf``).
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

HZ = 999
"""Samples per second of CPU time, per thread (off 1,000 so as not to beat with timers)."""
_SAMPLE = re.compile(r"\s*(\d+)/(\d+)\s+\S+\s+\((.*)\)\s*$")


@contextlib.contextmanager
def recording(pids: list[int], path: Path) -> Iterator[None]:
    """Sample the user-space CPU of ``pids`` (all their threads) into ``path`` meanwhile."""
    if shutil.which("perf") is None:
        raise RuntimeError("--perf needs Linux perf on PATH (Debian: apt-get install linux-perf)")
    argv = ["perf", "record", "-q", "-e", "cpu-clock:u", "-F", str(HZ), "-o", str(path)]
    perf = subprocess.Popen(
        [*argv, "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield
    finally:
        perf.send_signal(signal.SIGINT)  # perf writes its file and exits
        _, err = perf.communicate(timeout=60)
    if perf.returncode not in (0, -signal.SIGINT) or not path.exists():
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
        library = dso.rsplit("/", 1)[-1].split(".cpython-", 1)[0] or "[unknown]"
        counts[roles.get(int(pid), "other process"), thread, library] += 1
    return {key: n / HZ for key, n in counts.items()}
