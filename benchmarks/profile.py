"""Profile our ``/predict`` under load with py-spy, and say where the CPU time goes.

py-spy samples the Python stacks of every worker (on-CPU threads only). Each sample is
charged to the nearest frame, walking out from the innermost one, that belongs to our code
(``service.py``, ``serving/``, ``training/``) or to a framework package; standard-library and
numeric-library frames (asyncio, json, logging, numpy, onnxruntime) are charged to whoever
called them. Time inside C extensions (pydantic-core, onnxruntime) counts for the Python
frame that called into them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from benchmarks import launch, load
from harness.servers import BIN
from training.settings import PROJECT_DIR

PROBES = Path(__file__).with_name("probes")
RATE = 100
"""py-spy samples per second."""

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
OUR_PARTS = ("service.py", "serving/", "training/")
PASS_THROUGH = {"numpy", "onnxruntime", "pandas", "sklearn", "scipy"}
LAYERS = {
    "bentoml": "BentoML",
    "_bentoml_impl": "BentoML",
    "_bentoml_sdk": "BentoML",
    "starlette": "Starlette",
    "uvicorn": "uvicorn (HTTP: httptools; event loop: uvloop)",
    "h11": "uvicorn (HTTP: httptools; event loop: uvloop)",
    "uvloop": "uvicorn (HTTP: httptools; event loop: uvloop)",
    "httptools": "uvicorn (HTTP: httptools; event loop: uvloop)",
    "opentelemetry": "OpenTelemetry (BentoML's tracing middleware)",
    "prometheus_client": "prometheus_client (BentoML's metrics)",
    "pydantic": "pydantic (Python side)",
    "pydantic_core": "pydantic (Python side)",
    "anyio": "anyio",
    "grpc": "gRPC server threads",
}
WAITING = {
    "Condition.wait",
    "Event.wait",
    "Thread.run",
    "EpollSelector.select",
    "_worker",
    "CaptureWriter._read_reports",  # blocked reading its capture sink's report pipe
}
"""Leaf frames of threads that wait (the registry watcher, gRPC and thread-pool threads,
the capture writer's report reader).

py-spy reports some of them as active; they use no CPU, so they are counted apart."""
KEY_FUNCTIONS = {
    "IrisClassifier.predict": "service.py",
    "IrisRuntime.predict_rows": "serving/runtime.py",
    "OnnxClassifier.predict_proba": "training/onnx_model.py",
    "json_response": "serving/errors.py",
    "Metrics.record": "serving/metrics.py",
    "AccessLogMiddleware.__call__": "access.py",
}


def pyspy_path() -> str:
    found = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed (pip install -r benchmarks/requirements.txt)")
    return found


def record(root_pid: int, out: Path, duration_s: int, rate: int = RATE) -> Path:
    """Sample the server's whole process tree for ``duration_s`` seconds (raw stacks)."""
    argv = [pyspy_path(), "record", "--pid", str(root_pid), "--subprocesses", "--full-filenames"]
    argv += ["--duration", str(duration_s), "--rate", str(rate), "--format", "raw", "-o", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return out


def owner(path: str) -> str | None:
    """Our code, a framework layer, or None (pass-through: stdlib, numeric libraries)."""
    if "site-packages/" in path:
        package = path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        if package in PASS_THROUGH:
            return None
        return LAYERS.get(package, f"other: {package}")
    if path.startswith(str(PROJECT_DIR)) and any(p in path for p in OUR_PARTS):
        return "our code"
    return None


PROCESS = re.compile(r'process \d+:"')
"""py-spy's process frame (``--subprocesses``): ``process <pid>:"<command line>"``."""


def is_workers(parts: list[str], worker_marker: str) -> bool:
    """Whether a py-spy stack (its frames) is a worker's own: a child's stack names its
    parents' processes first, so only the innermost process frame is its own (a worker's
    capture sink is a child of the worker, and not a worker)."""
    processes = [p for p in parts if PROCESS.match(p)]
    return bool(processes) and worker_marker in processes[-1]


def analyse(raw: Path, worker_marker: str = "_bentoml_impl.worker.service") -> dict:
    """Shares of worker CPU samples by owner, key functions (inclusive) and hottest leaves.

    Percentages are of the workers' busy samples (waiting threads excluded).
    """
    owners: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = other_processes = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        if not is_workers(parts, worker_marker):
            other_processes += count
            continue
        frames = [m for p in parts if (m := FRAME.match(p))]
        if frames and frames[-1]["func"] in WAITING:
            waiting += count
            continue
        total += count
        charged = next((m for m in reversed(frames) if owner(m["file"])), None)
        who = owner(charged["file"]) if charged else "stdlib only"
        owners[who] += count
        if who == "our code":
            ours[f"{charged['func']} ({_short(charged['file'])})"] += count
        if frames:
            leaf = frames[-1]
            leaves[f"{leaf['func']} ({_short(leaf['file'])}) -> {who}"] += count
        for key in {k for m in frames for k, f in KEY_FUNCTIONS.items() if _is(m, k, f)}:
            inclusive[key] += count

    def share(n: int) -> float:
        return round(100 * n / total, 1) if total else 0.0

    return {
        "worker_samples": total,
        "waiting_samples": waiting,
        "other_process_samples": other_processes,
        "by_owner_pct": {k: share(v) for k, v in owners.most_common()},
        "inclusive_pct": {k: share(inclusive[k]) for k in KEY_FUNCTIONS},
        "our_code_by_function_pct": {k: share(v) for k, v in ours.most_common(10)},
        "top_leaves_pct": {k: share(v) for k, v in leaves.most_common(15)},
    }


def _is(frame: re.Match, func: str, file_suffix: str) -> bool:
    return frame["func"] == func and frame["file"].endswith(file_suffix)


def _short(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    return path.removeprefix(str(PROJECT_DIR) + "/")


def profile_ours(
    peer: launch.Peer, work: Path, body_file: Path, *, seconds: int, connections: int, freeze: bool
) -> dict:
    """A fresh instance of our service with the GC probe: py-spy and GC passes under load.

    With ``freeze``, every worker then calls ``gc.freeze()`` and is loaded again, to show what
    keeping the start-up heap out of the collector would change (an experiment, not the
    product).
    """
    gc_dir = work / "gc"
    gc_dir.mkdir(exist_ok=True)
    path = os.pathsep.join([str(PROBES), peer.env.get("PYTHONPATH", "")])
    probed = dataclasses.replace(
        peer,
        key="ours-probe",
        env={**peer.env, "PYTHONPATH": path, "IRIS_BENCH_GC_DIR": str(gc_dir)},
    )
    url = peer.url + peer.predict_path
    with launch.running(probed, work) as live:
        workers = [
            p
            for p in psutil.Process(live.server.process.pid).children()
            if launch.process_role(p, " ".join(p.cmdline())) == "worker"
        ]  # not "the leaves": with capture on, each worker has its capture sink as a child
        loader = threading.Thread(
            target=load.run_wrk,
            args=(url, body_file),
            kwargs={"connections": connections, "duration_s": seconds + 2},
        )
        started = time.time()
        loader.start()
        try:
            time.sleep(1)
            window = (time.time(), time.time() + seconds)
            raw = record(live.server.process.pid, work / "profile-ours.txt", seconds)
        finally:
            loader.join()
        summary = analyse(raw)
        summary.update(seconds=seconds, concurrency=connections)
        summary["gc"] = gc_passes(gc_dir, workers, window)
        gc_ms = sum(g["total_ms"] for g in summary["gc"].values())
        # GC runs inside whatever frame allocated, so py-spy charges it there; this is the
        # share of busy samples that the probe's GC time amounts to.
        busy = summary["worker_samples"] or 1
        summary["gc_share_of_busy_samples_pct"] = round(100 * gc_ms / 1000 * RATE / busy, 1)
        summary["load_during_profile_started"] = round(started, 3)
        if freeze:
            summary["gc_freeze_experiment"] = freeze_and_measure(
                live, workers, gc_dir, url, body_file, seconds, connections
            )
    return summary


def freeze_and_measure(
    live: launch.Running,
    workers: list[psutil.Process],
    gc_dir: Path,
    url: str,
    body_file: Path,
    seconds: int,
    connections: int,
) -> dict:
    for proc in workers:
        proc.send_signal(signal.SIGUSR2)
    time.sleep(2)
    result: dict = {"frozen_objects": {}}
    for proc in workers:
        lines = (gc_dir / f"gc-{proc.pid}.log").read_text().splitlines()
        froze = [x.split()[-1] for x in lines if " froze " in x]
        result["frozen_objects"][str(proc.pid)] = int(froze[-1]) if froze else None
    load.run_wrk(url, body_file, connections=connections, duration_s=2)  # warm-up
    for c in sorted({1, connections}):
        start = time.time()
        step = load.run_wrk(url, body_file, connections=c, duration_s=seconds)
        result[str(c)] = step.to_dict()
        result[str(c)]["gc"] = gc_passes(gc_dir, workers, (start, time.time()))
    return result


def gc_passes(gc_dir: Path, workers: list[psutil.Process], window: tuple[float, float]) -> dict:
    """Per worker: GC passes over 1 ms in the window, their total, and the full (gen2) ones."""
    out = {}
    span_ms = (window[1] - window[0]) * 1000
    for proc in workers:
        path = gc_dir / f"gc-{proc.pid}.log"
        rows = [x.split() for x in path.read_text().splitlines()] if path.exists() else []
        rows = [r for r in rows if r[1].startswith("gen") and window[0] <= float(r[0]) <= window[1]]
        total = sum(float(r[2]) for r in rows)
        out[str(proc.pid)] = {
            "passes_over_1ms": len(rows),
            "total_ms": round(total, 1),
            "pct_of_wall_time": round(100 * total / span_ms, 1) if span_ms else None,
            "gen2_ms": [round(float(r[2]), 1) for r in rows if r[1] == "gen2"],
        }
    return out
