"""``python -m benchmarks.loop_cpu``: CPU time per answered request, by process, with the
loop on and off.

Serves the benchmark's registry as the ``loop_on`` peer of ``benchmarks.run`` (capture on,
every request scored in shadow), then ``loop_off``, then ``loop_on`` again (to see the
machine's drift), loads each with ``/predict`` at c=32 (wrk), and prints the CPU seconds
its workers and capture sinks used per request (user + system, from the kernel's
accounting, so threads and idle waits are counted as they really are: a sampling
profiler's idle detection is not involved). Requests/s depend on how wrk's connections
land on the workers; CPU per request does not, which is why this diagnosis exists.
Nothing is written to the results folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import psutil
import typer

from benchmarks import launch, load, run

app = typer.Typer(help=__doc__, add_completion=False)


def cpu_by_role(root: psutil.Process, threads: bool = False) -> dict:
    """``{key: (role, cpu seconds)}`` of a server's process tree, one key per process; with
    ``threads``, a worker's event-loop thread (the one whose id is the pid) apart from its
    other threads (capture writer, report reader, monitors, ONNX Runtime's)."""
    found: dict = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            role = launch.process_role(proc, " ".join(proc.cmdline()))
            main = [t for t in proc.threads() if t.id == proc.pid] if threads else []
        except psutil.NoSuchProcess:
            continue
        total = times.user + times.system
        if role == "worker" and main:
            loop = main[0].user_time + main[0].system_time
            found[(proc.pid, "loop")] = ("worker event loop", loop)
            found[(proc.pid, "rest")] = ("worker other threads", total - loop)
        else:
            found[proc.pid] = (role, total)
    return found


@app.command()
def main(
    seconds: Annotated[int, typer.Option(min=2, help="Seconds of load per peer.")] = 15,
    connections: Annotated[int, typer.Option(help="Concurrent clients.")] = 32,
    env: Annotated[
        list[str], typer.Option(help="KEY=VALUE set on the loop_on peer (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    threads: Annotated[
        bool, typer.Option(help="Split a worker's CPU: its event-loop thread, the others.")
    ] = False,
) -> None:
    """Measure CPU per request of loop_on, loop_off, loop_on."""
    work = Path(tempfile.mkdtemp(prefix="iris-loop-cpu-"))
    try:
        trained = run.trained_registry(work)
        peers = launch.build_peers(trained.env, work, load.iris_rows(1)[0], 1)
        peers["loop_on"].env.update(item.split("=", 1) for item in env)
        for key in ("loop_on", "loop_off", "loop_on"):
            peer = peers[key]
            body = work / "body.json"
            body.write_text(json.dumps(peer.body))
            with launch.running(peer, work) as live:
                root = psutil.Process(live.server.process.pid)
                load.run_wrk(peer.url + "/predict", body, connections=connections, duration_s=3)
                time.sleep(2)
                before = cpu_by_role(root, threads)
                result = load.run_wrk(
                    peer.url + "/predict", body, connections=connections, duration_s=seconds
                )
                after = cpu_by_role(root, threads)
            used: dict[str, float] = {}
            for pid, (role, cpu) in after.items():
                used[role] = used.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
            per_request = {
                role: round(1e6 * cpu / result.requests) for role, cpu in sorted(used.items())
            }
            typer.echo(
                f"{key}: {result.rps:,.0f} requests/s; CPU µs per request: "
                + ", ".join(f"{role} {us}" for role, us in per_request.items())
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()
