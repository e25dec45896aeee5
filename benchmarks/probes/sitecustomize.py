"""GC probe for the profiling run only: never on the path of a measured or shipped server.

``benchmarks.profile`` puts this folder on ``PYTHONPATH`` of one extra instance of our
service, with ``IRIS_BENCH_GC_DIR`` set. Python then imports it at start-up in every process
of that server. It appends one line per garbage-collection pass that took over 1 ms (and
every full, generation-2, pass) to ``$IRIS_BENCH_GC_DIR/gc-PID.log``, and on SIGUSR2 moves
every object alive at that moment out of the collector's reach (``gc.freeze()``), to show
what that would change.
"""

import gc
import os
import signal
import time

_DIR = os.environ.get("IRIS_BENCH_GC_DIR")
_started = [0.0]


def _log(text: str) -> None:
    with open(os.path.join(_DIR, f"gc-{os.getpid()}.log"), "a") as f:
        f.write(f"{time.time():.3f} {text}\n")


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _started[0]) * 1000
    if ms > 1 or info["generation"] == 2:
        _log(f"gen{info['generation']} {ms:.2f}")


def _freeze(_signum: int, _frame: object) -> None:
    gc.collect()
    gc.freeze()
    _log(f"froze {gc.get_freeze_count()}")


if _DIR:
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR2, _freeze)
