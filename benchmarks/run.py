"""``python -m benchmarks.run``: train a fresh registry, serve its champion four ways, load each.

One peer runs at a time, on 127.0.0.1, and is stopped (by process group and PID) before the
next one starts, also on failure or Ctrl-C; the two loop peers (capture and shadow on and
off) run together, their rounds alternating, since their ratio is the measurement. Results
go to ``benchmarks/results/latest.json`` and the table in ``benchmarks/README.md``.

Over 250 lines (about 390): the options, the pairing and re-running of the loop rounds,
and the batch and memory steps share one run's state; the load itself is in ``load``, the
servers in ``launch``, the tables in ``report``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import httpx
import typer

from benchmarks import launch, load, profile, report
from harness.servers import BIN
from harness.training import iris_train, train_home
from training.schema import SPECIES

app = typer.Typer(help=__doc__, add_completion=False)
RESULTS = Path(__file__).with_name("results")
QUIET_LOAD = 0.5
PAIR = ("loop_on", "loop_off")
"""Peers compared with each other (the closed loop's cost): run together, interleaved."""
RERUNS = 3
"""Times a pair's round whose connections split unevenly (:func:`balanced`) is run again;
the last try counts whatever its split, and every skipped one is kept in the results."""


@app.command()
def main(
    duration: Annotated[int, typer.Option(min=1, help="Seconds of wrk load per step.")] = 10,
    concurrency: Annotated[
        list[int], typer.Option(help="wrk connections per step (repeat the option).")
    ] = [1, 32],  # noqa: B006 (Typer reads the default; it is never mutated)
    # wrk counts time in whole seconds.
    warmup: Annotated[int, typer.Option(min=1, help="Seconds of unmeasured load first.")] = 3,
    wrk_threads: Annotated[int, typer.Option(help="wrk threads (the load shares the CPUs).")] = 1,
    peers: Annotated[
        list[str],
        typer.Option(help="Peers to run: ours, loop_on, loop_off, noop, seed, mlflow (repeat)."),
    ] = list(report.PEER_ORDER),  # noqa: B006
    mlflow_workers: Annotated[
        int, typer.Option(help="uvicorn workers for mlflow models serve (MLflow's default: 1).")
    ] = 1,
    rounds: Annotated[
        int,
        typer.Option(
            min=1,
            help="wrk runs at the highest concurrency (median; each opens new connections).",
        ),
    ] = 3,
    batch_rows: Annotated[int, typer.Option(help="Rows in the batch request.")] = 10_000,
    batch_repeats: Annotated[int, typer.Option(help="Timed batch requests (median).")] = 7,
    profile_seconds: Annotated[
        int, typer.Option(help="py-spy our /predict under load for this long; 0 skips it.")
    ] = 10,
    gc_freeze: Annotated[
        bool,
        typer.Option(
            "--gc-freeze/--no-gc-freeze",
            help="After profiling, gc.freeze() the profiled workers and load them again.",
        ),
    ] = True,
    out: Annotated[Path, typer.Option(help="Folder for the results file.")] = RESULTS,
    result_name: Annotated[
        str,
        typer.Option(help="Results file name without .json (e.g. loop-1 for a --peers subset)."),
    ] = "latest",
    readme: Annotated[
        bool, typer.Option("--readme/--no-readme", help="Rewrite the table in the README.")
    ] = True,
    loop_env: Annotated[
        list[str],
        typer.Option(
            help="KEY=VALUE set on the loop_on peer (repeatable; a diagnosis, e.g. "
            "IRIS_SHADOW_RATE=0 for capture alone). Recorded in the results."
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    keep_work: Annotated[
        bool, typer.Option(help="Keep the temp folder (registry, server logs, profile).")
    ] = False,
) -> None:
    """Benchmark our service against mlflow models serve, a seed-style server and a no-op."""
    unknown = set(peers) - set(report.PEER_ORDER)
    if unknown:
        raise typer.BadParameter(f"unknown peer(s) {sorted(unknown)}", param_hint="--peers")
    overrides = env_pairs(loop_env)
    if overrides and result_name == "latest":  # a diagnosis is not the benchmark's result
        raise typer.BadParameter("name the results of a diagnosis", param_hint="--result-name")
    signal.signal(signal.SIGTERM, _interrupt)  # so `finally` blocks stop the servers
    load.require_wrk()
    load_start = round(os.getloadavg()[0], 2)
    if load_start > QUIET_LOAD:
        typer.echo(f"warning: load average {load_start} > {QUIET_LOAD}: numbers will be noisy")
    work = Path(tempfile.mkdtemp(prefix="iris-bench-"))
    ok = False
    try:
        result = run(
            work,
            duration=duration,
            concurrency=concurrency,
            warmup=warmup,
            wrk_threads=wrk_threads,
            rounds=rounds,
            keys=peers,
            mlflow_workers=mlflow_workers,
            batch_rows=batch_rows,
            batch_repeats=batch_repeats,
            profile_seconds=profile_seconds,
            gc_freeze=gc_freeze,
            loop_env=overrides,
        )
        load_end = round(os.getloadavg()[0], 2)
        result["load_average"] = {"start": load_start, "end": load_end}
        result["kind"] = _kind(duration, load_start)
        result["targets"] = report.targets(result)
        # A diagnosis (another loop_on) is not the benchmark: it never rewrites the README.
        path = report.write(result, out, readme and not loop_env, result_name)
        typer.echo(report.markdown(result))
        if "profile" in result:
            typer.echo("\nprofile (share of busy worker samples):")
            typer.echo(json.dumps(result["profile"]["by_owner_pct"], indent=2))
        typer.echo(f"\nwrote {path}")
        ok = True
    finally:
        if keep_work or not ok:
            typer.echo(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def trained_registry(work: Path):
    """The benchmark's registry under ``work/home``: a Random Forest champion (v1) and a
    ``@challenger`` (v2), with the environment every peer is started from."""
    typer.echo(f"training a fresh registry in {work}/home ...")
    trained = train_home(work / "home")
    trained.env["PATH"] = _path()  # the venv's mlflow, uvicorn and bentoml first
    trained.env["IRIS_TRACKING_URI"] = trained.tracking_uri
    champion = trained.result
    if champion["best_candidate"] != "random_forest" or not champion["promoted"]:
        raise AssertionError(f"expected a Random Forest champion, got {champion}")
    _add_challenger(trained)
    return trained


def env_pairs(items: list[str], option: str = "--loop-env") -> dict[str, str]:
    """``KEY=VALUE`` items of ``option`` as a dict; anything else is a usage error naming
    the item and the option."""
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
    return dict(item.split("=", 1) for item in items)


def run(work: Path, **opts) -> dict:
    trained = trained_registry(work)
    champion = trained.result
    row = load.iris_rows(1)[0]
    peers = launch.build_peers(trained.env, work, row, opts["mlflow_workers"])
    if opts["loop_env"]:
        peers["loop_on"].env.update(opts["loop_env"])
        peers["loop_on"].settings["env_override"] = opts["loop_env"]
    result: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "versions": report.versions(load.wrk_version()),
        "settings": {
            "duration_s": opts["duration"],
            "concurrency": opts["concurrency"],
            "target_concurrency": max(opts["concurrency"]),
            "warmup_s": opts["warmup"],
            "wrk_threads": opts["wrk_threads"],
            "rounds_at_target": opts["rounds"],
            "wrk_timeout_s": 10,
            "host": "127.0.0.1",
            "request": json.dumps(launch.our_body(row)),
        },
        "champion": {
            "version": champion["version"],
            "candidate": champion["best_candidate"],
            "run_id": champion["best_run_id"],
            "bento_tag": champion["bento_tag"],
        },
        "peers": {},
    }
    keys = list(opts["keys"])
    paired = PAIR if set(PAIR) <= set(keys) else ()
    for key in keys:
        if key in paired[1:]:
            continue  # measured with the first of its pair
        group = [peers[k] for k in (paired if key in paired else (key,))]
        entries = {}
        for peer in group:
            typer.echo(f"== {peer.title}")
            entries[peer.key] = result["peers"][peer.key] = {
                "title": peer.title,
                "settings": peer.settings,
            }
        try:
            measure(group, work, entries, opts, champion["version"])
        except (RuntimeError, TimeoutError, AssertionError, httpx.HTTPError) as e:
            for entry in entries.values():
                entry["error"] = str(e)[:2000]
            typer.echo(f"   FAILED: {str(e).splitlines()[0]}")
    answers = {p["answer"]["species"] for p in result["peers"].values() if "answer" in p}
    result["same_species_from_every_peer"] = len(answers) == 1
    if "profile" in result["peers"].get("ours", {}):
        result["profile"] = result["peers"]["ours"].pop("profile")
    return result


def loop_counters(url: str) -> dict[str, float | None]:
    """What the loop did during the load: captured, dropped, and shadow-scored, -skipped
    (the sink was behind) or -failed answers."""
    import re

    text = httpx.get(url + "/metrics", timeout=10).text
    totals = {}
    for name in (
        "captured",
        "capture_dropped",
        "shadow_scored",
        "shadow_agreed",
        "shadow_skipped",
        "shadow_failed",
    ):
        values = re.findall(rf"^iris_{name}_total(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
        # None: no series (a labelled counter appears with its first count, so absent
        # means none counted; a renamed metric shows here instead of passing as 0).
        totals[name] = sum(float(v) for v in values) if values else None
    return totals


def _add_challenger(trained) -> None:
    """A second version (another seed and split) as ``@challenger``, v1 staying champion:
    what the shadow-scoring peer compares against."""
    from mlflow import MlflowClient

    typer.echo("training a challenger (v2) ...")
    iris_train({**trained.env, "IRIS_SEED": "5", "IRIS_TEST_SIZE": "0.3"}, "run")
    iris_train(trained.env, "promote", trained.result["version"])
    client = MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    client.set_registered_model_alias(trained.settings.model_name, "challenger", "2")


def measure(group: list[launch.Peer], work: Path, entries: dict, opts: dict, version: str) -> None:
    """Load the peers of ``group`` (one, or the :data:`PAIR`) round by round. A pair is up
    at once and its rounds alternate (A B, B A, A B, ...), so the machine's drift over
    minutes falls on both alike rather than on whichever ran second."""
    with contextlib.ExitStack() as stack:
        lives = {}
        for peer in group:
            lives[peer.key] = live = stack.enter_context(launch.running(peer, work))
            _ready(live, peer, work, entries[peer.key], opts, version)
        workers = {key: launch.memory(live.server)["workers"] for key, live in lives.items()}
        for c in opts["concurrency"]:
            rounds = opts["rounds"] if c == max(opts["concurrency"]) else 1
            steps: dict[str, list[dict]] = {peer.key: [] for peer in group}
            skipped: dict[str, list[dict]] = {peer.key: [] for peer in group}
            for r in range(rounds):
                for peer in group if r % 2 == 0 else group[::-1]:
                    url = peer.url + peer.predict_path
                    body_file = work / f"body-{peer.key}.json"
                    step = wrk_step(lives[peer.key], peer, url, body_file, c, opts)
                    for _ in range(RERUNS if len(group) > 1 else 0):
                        if balanced(step, c, workers[peer.key]):
                            break
                        skipped[peer.key].append(step)
                        step = wrk_step(lives[peer.key], peer, url, body_file, c, opts)
                    steps[peer.key].append(step)
            for peer in group:
                entries[peer.key].setdefault("load", {})[str(c)] = step = load.combine(
                    steps[peer.key]
                )
                if skipped[peer.key]:
                    step["unbalanced_rounds_run_again"] = skipped[peer.key]
                typer.echo(
                    f"   {peer.key} c={c}: {step['rps']:,.0f} req/s, p50 {step['p50_ms']:.1f} "
                    f"ms, p99 {step['p99_ms']:.1f} ms, errors {step['errors']}"
                    + (f" (median of {rounds} rounds)" if rounds > 1 else "")
                    + f", connections by pid {step['connections_per_process']}"
                )
        for peer in group:
            _after_load(lives[peer.key], peer, entries[peer.key], opts)
    if group[0].key == "ours" and opts["profile_seconds"] > 0:
        typer.echo("   profiling a fresh instance (py-spy + GC probe) ...")
        entries["ours"]["profile"] = profile.profile_ours(
            group[0],
            work,
            work / "body-ours.json",
            seconds=opts["profile_seconds"],
            connections=max(opts["concurrency"]),
            freeze=opts["gc_freeze"],
        )


def balanced(step: dict, connections: int, workers: int) -> bool:
    """Whether a round's connections reached every worker, each with at least half its
    even share. Which worker accepts a connection is a race (BentoML's workers share one
    listening socket), and a round with most connections on one worker measures that
    race, not the server: a pair's rounds that are not balanced are run again."""
    spread = step["connections_per_process"]
    fair = connections / workers / 2
    return len(spread) >= min(workers, connections) and min(spread.values()) >= fair


def _ready(
    live: launch.Running, peer: launch.Peer, work: Path, entry: dict, opts: dict, version: str
) -> None:
    """A started peer: its start-up times, one checked answer, and unmeasured load."""
    body_file = work / f"body-{peer.key}.json"
    body_file.write_text(json.dumps(peer.body))
    entry["cold_start_s"] = round(live.cold_start_s, 2)
    entry["settled_s"] = round(live.settled_s, 2)
    typer.echo(
        f"   {peer.key} healthy after {live.cold_start_s:.1f} s, idle after {live.settled_s:.1f} s"
    )
    entry["answer"] = check_answer(peer, version)
    url = peer.url + peer.predict_path
    load.run_wrk(url, body_file, connections=max(opts["concurrency"]), duration_s=opts["warmup"])


def _after_load(live: launch.Running, peer: launch.Peer, entry: dict, opts: dict) -> None:
    if peer.key == "ours":
        entry["batch"] = {
            shape: load.time_batches(live.server, body, opts["batch_rows"], opts["batch_repeats"])
            for shape, body in load.batch_bodies(opts["batch_rows"]).items()
        }
        for shape, b in entry["batch"].items():
            typer.echo(
                f"   batch {shape}: client {b['client_median_ms']} ms, "
                f"server {b['server_median_ms']} ms"
            )
    if peer.key.startswith("loop_"):
        entry["loop"] = loop_counters(live.server.url)
        typer.echo(f"   {peer.key} loop: {entry['loop']}")
    entry["memory"] = launch.memory(live.server)


def wrk_step(
    live: launch.Running, peer: launch.Peer, url: str, body_file: Path, c: int, opts: dict
) -> dict:
    """One wrk run at ``c`` connections, with how the server's processes shared them."""
    spread: dict[str, int] = {}
    started = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    probe = threading.Timer(
        opts["duration"] / 2,
        lambda: spread.update(launch.connections_per_process(live.server, peer.port)),
    )
    probe.start()
    try:
        step = load.run_wrk(
            url, body_file, connections=c, duration_s=opts["duration"], threads=opts["wrk_threads"]
        )
    finally:
        probe.cancel()
        probe.join()
    return {**step.to_dict(), "started": started, "connections_per_process": spread}


def check_answer(peer: launch.Peer, version: str) -> dict:
    """One request before the load: a 200 with the champion's answer, else the peer is wrong."""
    response = httpx.post(peer.url + peer.predict_path, json=peer.body, timeout=30)
    response.raise_for_status()
    data = response.json()
    species = SPECIES[int(data["predictions"][0])] if peer.key == "mlflow" else data["species"]
    if peer.key == "ours" and data["model"]["version"] != version:
        raise AssertionError(f"our service answered with v{data['model']['version']}")
    return {"species": species, "body_bytes": len(response.content)}


def _kind(duration: float, load_start: float) -> str:
    reasons = []
    if duration < 10:
        reasons.append(f"{duration:g} s steps")
    if load_start > QUIET_LOAD:
        reasons.append(f"machine busy (load {load_start})")
    return f"SMOKE RUN, not final ({', '.join(reasons)})" if reasons else "Full run"


def _path() -> str:
    return f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow runs `uvicorn` by name


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    app()
