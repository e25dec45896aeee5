"""``python -m benchmarks.loop_cpu``: CPU time per answered request, by process, with the
loop on and off, in alternating pairs.

Serves the benchmark's registry as the ``loop_on`` peer of ``benchmarks.run`` (capture on,
every request scored in shadow) and as ``loop_off`` (capture off), both up at once, and
loads them in turn with ``/predict`` at c=32 (wrk), ``--pairs`` times (on off, off on,
...), so the machine's drift falls on both alike. Each phase counts the CPU seconds the
server's processes used per request (user + system, from the kernel's accounting, so
threads and idle waits count as they really are: no sampling profiler's idle detection
is involved), including ``SETTLE_S`` after the load, by which the capture sink has
written the last flush. Requests/s depend on how wrk's connections land on the workers
and on what else the machine runs; CPU per request much less, and on saturated cores it
is what sets the requests/s a server can answer: a ratio ``r`` of CPU per request (on /
off, workers and sinks) predicts ``1 / r`` of the requests/s. A phase whose connections
mostly reached one worker is run again, as in ``benchmarks.run`` (its split is printed).

Prints one line per phase and, per pair, ``r``; then their mean with a 95 % interval
(Student's t over the pairs). With ``--perf``, Linux ``perf`` also samples the workers'
and sinks' user-space CPU during each phase (``benchmarks.perf_samples``), and the run
ends with where the difference is: µs per request by role, thread and library, on
against off. With ``--pin N``, each peer runs one worker, on core 0, its capture sink on
core N, and ``wrk`` and the supervisors on core 1: the worker's own CPU without
the other core's traffic, with its sink apart (1) or beside it (0). With ``--off-env``,
``loop_off`` gets settings too, so two loop settings can be compared (both capture on).
perf's own overhead falls on both peers but is not zero: a ``--perf`` run's
ratio is not one to pool with runs without it. Nothing is written to the results folder:
save the output (``benchmarks/results/loop-cpu-*.txt``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import psutil
import typer

from benchmarks import launch, load, perf_samples, run

app = typer.Typer(help=__doc__, add_completion=False)
PAIR = ("loop_on", "loop_off")
SETTLE_S = 3.0
"""Idle time counted after each phase's load: the sink writes a flush within a second."""


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


def pin(root: psutil.Process, sink_core: int) -> None:
    """Every thread of the server's one worker on core 0, its capture sink's on
    ``sink_core``, every other thread of its tree (the supervisor) on core 1, where ``wrk``
    runs too (``--pin``)."""
    for proc in [root, *root.children(recursive=True)]:
        try:
            role = launch.process_role(proc, " ".join(proc.cmdline()))
            threads = proc.threads()
        except psutil.NoSuchProcess:
            continue
        core = {"worker": 0, "capture sink": sink_core}.get(role, 1)
        for thread in threads:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(thread.id, {core})


def sampled_roles(root: psutil.Process) -> dict[int, str]:
    """The workers and capture sinks of a server's tree, by pid: what ``--perf`` samples."""
    roles = {}
    for proc in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            role = launch.process_role(proc, " ".join(proc.cmdline()))
            if role in ("worker", "capture sink"):
                roles[proc.pid] = role
    return roles


def phase(
    live: launch.Running,
    body: Path,
    seconds: int,
    connections: int,
    threads: bool,
    workers: int,
    perf_file: Path | None = None,
    sink_core: int | None = None,
) -> tuple[dict, dict[str, float], float, int, dict]:
    """One load of ``live``: (wrk's step, {role: CPU µs per request}, total µs, times run
    again, {(role, thread, library): sampled CPU µs per request} with ``perf_file``, else
    empty). A phase whose connections did not reach every worker evenly
    (:func:`benchmarks.run.balanced`) is run again, as ``benchmarks.run`` does, up to
    ``run.RERUNS`` times; the last try counts whatever its split."""
    root = psutil.Process(live.server.process.pid)
    url = live.peer.url + live.peer.predict_path
    opts = {"duration": seconds, "wrk_threads": 1}
    roles = sampled_roles(root)
    again = 0
    while True:
        if sink_core is not None:  # each phase: new threads and processes inherit a parent's
            pin(root, sink_core)
        with contextlib.ExitStack() as sampling:
            if perf_file is not None:
                sampling.enter_context(perf_samples.recording(list(roles), perf_file))
            before = cpu_by_role(root, threads)
            step = run.wrk_step(live, live.peer, url, body, connections, opts)
            time.sleep(SETTLE_S)
            after = cpu_by_role(root, threads)
        if again == run.RERUNS or run.balanced(step, connections, workers):
            break
        again += 1
    used: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        used[role] = used.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
    per_request = {role: 1e6 * cpu / step["requests"] for role, cpu in sorted(used.items())}
    sampled = {}
    if perf_file is not None:
        found = perf_samples.seconds_by_library(perf_file, roles)
        sampled = {key: 1e6 * cpu / step["requests"] for key, cpu in found.items()}
    return step, per_request, sum(per_request.values()), again, sampled


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95 % interval (Student's t)."""
    from scipy.stats import t

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def print_sampled(sampled: dict[str, list[dict]], rows: int = 12) -> None:
    """Sampled CPU µs per request, mean over the phases, on against off: per (role,
    thread), then the ``rows`` (role, thread, library) that differ most."""

    def mean(key: str, part: Callable[[tuple], bool]) -> float:
        phases = sampled[key]
        return sum(sum(v for k, v in ph.items() if part(k)) for ph in phases) / len(phases)

    keys = sorted({k for phases in sampled.values() for ph in phases for k in ph})
    typer.echo("perf, user-space CPU µs per request (mean over phases): on, off, on - off")
    for whole in sorted({k[:2] for k in keys}):
        on, off = (mean(key, lambda k, w=whole: k[:2] == w) for key in PAIR)
        typer.echo(f"  {' '.join(whole)}: {on:.1f}, {off:.1f}, {on - off:+.1f}")
    diffs = {k: [mean(key, lambda x, k=k: x == k) for key in PAIR] for k in keys}
    for k, (on, off) in sorted(diffs.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:rows]:
        typer.echo(f"    {' '.join(k)}: {on:.1f}, {off:.1f}, {on - off:+.1f}")


@app.command()
def main(
    seconds: Annotated[int, typer.Option(min=2, help="Seconds of load per phase.")] = 15,
    pairs: Annotated[int, typer.Option(min=1, help="Phases per peer (on off, off on, ...).")] = 8,
    connections: Annotated[int, typer.Option(help="Concurrent clients.")] = 32,
    env: Annotated[
        list[str], typer.Option(help="KEY=VALUE set on the loop_on peer (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    off_env: Annotated[
        list[str],
        typer.Option(
            help="KEY=VALUE set on the loop_off peer (repeatable): with IRIS_CAPTURE=true and "
            "IRIS_SHADOW_RATE=1.0, two loop settings are compared with each other."
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    threads: Annotated[
        bool, typer.Option(help="Split a worker's CPU: its event-loop thread, the others.")
    ] = False,
    perf: Annotated[
        bool,
        typer.Option(
            help="Also sample workers and sinks with Linux perf (user space) and print CPU "
            "per request by role, thread and library, on against off (benchmarks.perf_samples)."
        ),
    ] = False,
    sink_core: Annotated[
        int | None,
        typer.Option(
            "--pin",
            min=0,
            max=1,
            help="One worker per peer, on core 0, and its capture sink on this core; wrk and "
            "the supervisors on core 1. With 1, the worker's own CPU per request without the "
            "sink or the other core's noise; with 0, the sink shares the worker's core.",
        ),
    ] = None,
) -> None:
    """Measure CPU per request of loop_on and loop_off, alternating."""
    on_settings, off_settings = run.env_pairs(env, "--env"), run.env_pairs(off_env, "--off-env")
    work = Path(tempfile.mkdtemp(prefix="iris-loop-cpu-"))
    try:
        trained = run.trained_registry(work)
        peers = launch.build_peers(trained.env, work, load.iris_rows(1)[0], 1)
        peers["loop_on"].env.update(on_settings)
        peers["loop_off"].env.update(off_settings)
        if sink_core is not None:
            os.sched_setaffinity(0, {1})  # this process, so wrk too
            for key in PAIR:
                peers[key].env["BENTOML_CONFIG_OPTIONS"] = "services.iris_classifier.workers=1"
        with contextlib.ExitStack() as stack:
            lives, bodies, workers = {}, {}, {}
            for key in PAIR:
                lives[key] = stack.enter_context(launch.running(peers[key], work))
                workers[key] = launch.memory(lives[key].server)["workers"]
                if sink_core is not None and workers[key] != 1:
                    raise typer.BadParameter(f"--pin needs one worker; {key} has {workers[key]}")
                bodies[key] = work / f"body-{key}.json"
                bodies[key].write_text(json.dumps(peers[key].body))
                url = peers[key].url + peers[key].predict_path
                load.run_wrk(url, bodies[key], connections=connections, duration_s=3)
            totals: dict[str, list[float]] = {key: [] for key in PAIR}
            worker_us: dict[str, list[float]] = {key: [] for key in PAIR}
            rps: dict[str, list[float]] = {key: [] for key in PAIR}
            sampled: dict[str, list[dict]] = {key: [] for key in PAIR}
            for i in range(pairs):
                for key in PAIR if i % 2 == 0 else PAIR[::-1]:
                    step, per_request, total, again, libraries = phase(
                        lives[key],
                        bodies[key],
                        seconds,
                        connections,
                        threads,
                        workers[key],
                        work / "perf.data" if perf else None,
                        sink_core,
                    )
                    totals[key].append(total)
                    worker_us[key].append(
                        sum(us for role, us in per_request.items() if role.startswith("worker"))
                    )
                    rps[key].append(step["rps"])
                    sampled[key].append(libraries)
                    split = "+".join(str(n) for n in step["connections_per_process"].values())
                    typer.echo(
                        f"pair {i + 1} {key}: {step['rps']:,.0f} requests/s; CPU µs per request: "
                        + ", ".join(f"{role} {us:.0f}" for role, us in per_request.items())
                        + f"; total {total:.0f}; connections {split or '?'}"
                        + (f" (run again {again}x for an uneven split)" if again else "")
                    )
                typer.echo(
                    f"pair {i + 1}: on / off {totals['loop_on'][-1] / totals['loop_off'][-1]:.3f}"
                )
        if perf:
            print_sampled(sampled)
        ratios = [on / off for on, off in zip(totals["loop_on"], totals["loop_off"], strict=True)]
        mean, low, high = t_interval(ratios)
        typer.echo(
            f"CPU per request, on / off: {mean:.3f} (95 %: {low:.3f}-{high:.3f}, {pairs} pairs); "
            f"means {statistics.mean(totals['loop_on']):.0f} and "
            f"{statistics.mean(totals['loop_off']):.0f} µs; predicted requests/s on / off "
            f"{1 / mean:.3f} ({1 / high:.3f}-{1 / low:.3f})"
        )
        for what, values in (("workers' CPU per request", worker_us), ("requests/s", rps)):
            mean, low, high = t_interval(
                [on / off for on, off in zip(values["loop_on"], values["loop_off"], strict=True)]
            )
            typer.echo(f"{what}, on / off: {mean:.3f} (95 %: {low:.3f}-{high:.3f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()
