"""``python -m benchmarks.profile_loop``: where the closed loop's CPU goes, with py-spy.

Serves the benchmark's registry (a Random Forest champion and a ``@challenger``) with
capture on and every request scored in shadow (the ``loop_on`` peer of ``benchmarks.run``),
loads it with ``/predict`` at c=32 (wrk) and with 1,000-row V2 gRPC infer calls at c=32
(``benchmarks.grpc_load``), samples every worker with py-spy meanwhile, and prints, per
load, the share of the workers' busy samples spent in each part of the capture path
(inclusive), beside the request handlers. Only workers are sampled: the capture sinks,
which write the files and score the shadow, are separate processes (their CPU:
``benchmarks.loop_cpu``). Nothing is written to the results folder:
this is a diagnostic, the measurement is ``benchmarks.run`` / ``benchmarks.oip_peer``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from benchmarks import launch, load, oip_peer, profile, run

app = typer.Typer(help=__doc__, add_completion=False)
WATCH = (
    "IrisRuntime.predict_rows",
    "classify",  # serving/oip/versions.py: every V2 answer
    "IrisRuntime.answered",
    "IrisRuntime.capture",
    "CaptureWriter.submit",
    "CaptureWriter.flush",
    "CaptureWriter._spool",
    "row_ids",
    "Metrics.record",
    "LoopMonitor.check_once",
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")


def inclusive(raw: Path, worker_marker: str = "_bentoml_impl.worker.service") -> dict:
    """Share (%) of the workers' busy samples under each function of ``WATCH``."""
    seen: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        parts = stack.split(";")
        if not profile.is_workers(parts, worker_marker):
            continue
        frames = [m["func"] for p in parts if (m := FRAME.match(p))]
        if frames and frames[-1] in profile.WAITING:
            continue
        total += int(count_text)
        for name in set(frames) & set(WATCH):
            seen[name] += int(count_text)
    return {
        "busy_samples": total,
        **{k: round(100 * seen[k] / total, 1) for k in WATCH if total and seen[k]},
    }


def _profiled(live, work: Path, name: str, seconds: int, loader) -> dict:
    thread = threading.Thread(target=loader)
    thread.start()
    try:
        time.sleep(2)
        raw = profile.record(live.server.process.pid, work / f"{name}.txt", seconds)
    finally:
        thread.join()
    summary = profile.analyse(raw)
    return {
        "inclusive_pct": inclusive(raw),
        "top_leaves_pct": summary["top_leaves_pct"],
        "by_owner_pct": summary["by_owner_pct"],
    }


@app.command()
def main(
    seconds: Annotated[int, typer.Option(min=2, help="Seconds of sampling per load.")] = 10,
    connections: Annotated[int, typer.Option(help="Concurrent clients.")] = 32,
    rows: Annotated[int, typer.Option(help="Rows per V2 gRPC request.")] = 1000,
) -> None:
    """Profile the loop_on peer under /predict and V2 gRPC load."""
    work = Path(tempfile.mkdtemp(prefix="iris-profile-loop-"))
    try:
        trained = run.trained_registry(work)
        row = load.iris_rows(1)[0]
        peer = launch.build_peers(trained.env, work, row, 1)["loop_on"]
        grpc_port = int(peer.env["IRIS_GRPC_PORT"])
        body = work / "body.json"
        body.write_text(json.dumps(peer.body))
        _, grpc_file = oip_peer.write_bodies(work, "ours", rows, ())
        out: dict = {}
        with launch.running(peer, work) as live:
            out["predict"] = _profiled(
                live,
                work,
                "predict",
                seconds,
                lambda: load.run_wrk(
                    peer.url + "/predict",
                    body,
                    connections=connections,
                    duration_s=seconds + 4,
                ),
            )
            out[f"grpc_{rows}_rows"] = _profiled(
                live,
                work,
                "grpc",
                seconds,
                lambda: oip_peer.grpc_run(
                    f"127.0.0.1:{grpc_port}", grpc_file, connections, seconds + 4
                ),
            )
            out["loop_counters"] = run.loop_counters(live.server.url)
            out["memory"] = launch.memory(live.server)
        typer.echo(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()
