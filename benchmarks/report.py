"""Targets, the results tables (Markdown), the JSON record and the README section.

The tables are also what ``scripts/gen_docs.py`` writes into ``docs/performance.md``.
Over 250 lines (about 400): each table is a short function over the one results format,
and splitting them would scatter that format.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from training.settings import PROJECT_DIR

README = Path(__file__).with_name("README.md")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
OIP_START, OIP_END = "<!-- oip-bench:start -->", "<!-- oip-bench:end -->"
PACKAGES = (
    "bentoml",
    "mlflow",
    "fastapi",
    "uvicorn",
    "starlette",
    "httptools",
    "uvloop",
    "pydantic",
    "onnxruntime",
    "scikit-learn",
    "py-spy",
)
PEER_ORDER = ("ours", "loop_on", "loop_off", "noop", "seed", "mlflow")
TITLES = {
    "ours": "our service",
    "loop_on": "ours, capture + shadow on",
    "loop_off": "ours, capture off",
    "noop": "no-op BentoML",
    "seed": "seed-style FastAPI",
    "mlflow": "mlflow models serve",
}


def machine() -> dict:
    """What the numbers were measured on, including how busy it was."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(wrk: str) -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["wrk"] = wrk
    commit = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    found["project_commit"] = commit.stdout.strip() or None
    return found


def targets(result: dict) -> list[dict]:
    """The issue's targets, each computed from this run only: PASS, MISS or n/a."""
    c = result["settings"]["target_concurrency"]
    peers = result["peers"]

    def load(key: str) -> dict | None:
        step = peers.get(key, {}).get("load", {}).get(str(c))
        return step if step and step["requests"] else None

    rows = []
    ours = load("ours")
    for key, goal in (("mlflow", 10.0), ("seed", 10.0), ("noop", 0.9)):
        peer = load(key)
        ratio = ours["rps"] / peer["rps"] if ours and peer else None
        rows.append(_target(f"/predict rps at c={c}: ours / {TITLES[key]}", ratio, goal))
    noop = load("noop")
    ratio = ours["p99_ms"] / noop["p99_ms"] if ours and noop else None
    rows.append(_target(f"p99 at c={c}: ours / no-op BentoML", ratio, 1.5, higher=False))
    # The closed loop's cost: capture of every answer plus shadow scoring of every request
    # by the challenger, against the same service with capture off and no shadow.
    on, off = load("loop_on"), load("loop_off")
    ratio = on["rps"] / off["rps"] if on and off else None
    rows.append(_target(f"/predict rps at c={c}: capture+shadow on / off", ratio, 0.9))
    rows[-1]["interval"] = ratio_interval(on, off, "rps")
    ratio = on["p99_ms"] / off["p99_ms"] if on and off else None
    rows.append(_target(f"p99 at c={c}: capture+shadow on / off", ratio, 1.2, higher=False))
    rows[-1]["interval"] = ratio_interval(on, off, "p99_ms")
    for shape, batch in peers.get("ours", {}).get("batch", {}).items():
        rows.append(
            _target(
                f"{batch['rows']:,}-row batch ({shape}), server-side median ms",
                batch.get("server_median_ms"),
                50.0,
                higher=False,
                strict=True,
                unit=" ms",
            )
        )
    return rows


def ratio_interval(
    on: dict | None, off: dict | None, key: str, draws: int = 4000
) -> list[float] | None:
    """A 95 % bootstrap interval of ``median(on rounds) / median(off rounds)``: how far
    the ratio of one run could move with other rounds of the same machine. Rounds of each
    side are resampled with replacement (seeded, so a result file gives one interval);
    None with fewer than 4 rounds a side."""
    a = [r[key] for r in (on or {}).get("rounds", [])]
    b = [r[key] for r in (off or {}).get("rounds", [])]
    if len(a) < 4 or len(b) < 4:
        return None
    rng = random.Random(0)
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
        for _ in range(draws)
    )
    return [round(ratios[int(0.025 * draws)], 2), round(ratios[int(0.975 * draws) - 1], 2)]


def _target(
    name: str,
    value: float | None,
    goal: float,
    *,
    higher: bool = True,
    strict: bool = False,
    unit: str = "×",
) -> dict:
    if value is None:
        verdict = "n/a"
    elif higher:
        verdict = "PASS" if value >= goal else "MISS"
    else:
        verdict = "PASS" if (value < goal if strict else value <= goal) else "MISS"
    sign = (">" if strict else "≥") if higher else ("<" if strict else "≤")
    return {
        "target": name,
        "measured": None if value is None else round(value, 2),
        "goal": f"{sign} {goal:g}{unit}",
        "verdict": verdict,
        "unit": unit,
    }


def _spread(step: dict) -> str:
    """``16+16``: connections each worker held; with several rounds, each round's split and
    requests/s (``16+16: 2,003; 32: 952``), since the split moves throughput."""
    rounds = step.get("rounds")
    if not rounds:
        return "+".join(str(n) for n in step.get("connections_per_process", {}).values())
    return "; ".join(
        f"{'+'.join(str(n) for n in r['connections_per_process'].values()) or '?'}: {r['rps']:,.0f}"
        for r in rounds
    )


def markdown(result: dict) -> str:
    """The tables ``benchmarks/README.md`` shows (``docs/performance.md`` shows a subset)."""
    lines = [header(result), "", *load_table(result), "", *targets_table(result)]
    lines += ["", *memory_table(result)]
    batch = batch_table(result)
    if batch:
        lines += ["", *batch]
    lines += ["", "Peer settings:", ""]
    for key in _present(result):
        peer = result["peers"][key]
        text = "; ".join(f"{k}: {v}" for k, v in peer["settings"].items())
        lines.append(f"- {peer['title']}: {text}")
        if "error" in peer:
            lines.append(f"  - **failed**: {peer['error'].splitlines()[0]}")
    if "profile" in result:
        lines += ["", *profile_markdown(result["profile"])]
    return "\n".join(lines)


def header(result: dict) -> str:
    """One line: what kind of run, when, on what machine, how loaded, how long each step."""
    m, s = result["machine"], result["settings"]
    return (
        f"**{result['kind']}** — {result['date']} — {m['nproc']} cores ({m['cpu_model']}), "
        f"{m['memory_gib']} GiB; load average {result['load_average']['start']} at start, "
        f"{result['load_average']['end']} at end; wrk {s['duration_s']:g} s per step, "
        f"{s['wrk_threads']} wrk thread(s), on the same machine; at c={s['target_concurrency']} "
        f"the median of {s.get('rounds_at_target', 1)} runs."
    )


def load_table(result: dict) -> list[str]:
    """Requests/s and latency of every peer at every concurrency, with ours ÷ peer."""
    lines = [
        "| peer | c | requests/s | p50 ms | p99 ms | errors | ours ÷ peer (rps) "
        "| connections per worker (per run: requests/s) |",
        "| --- | --: | --: | --: | --: | --: | --: | --- |",
    ]
    ours = result["peers"].get("ours", {}).get("load", {})
    for key in _present(result):
        peer = result["peers"][key]
        for c, step in peer.get("load", {}).items():
            mine = ours.get(c)
            ratio = f"{mine['rps'] / step['rps']:.2f}×" if mine and step["rps"] else "–"
            spread = _spread(step)
            lines.append(
                f"| {peer['title']} | {c} | {step['rps']:,.0f} | {step['p50_ms']:.1f} "
                f"| {step['p99_ms']:.1f} | {step['errors']} | {ratio} | {spread or '–'} |"
            )
    return lines


def targets_table(result: dict) -> list[str]:
    """Every target with its measured value, goal and verdict (see :func:`targets`)."""
    lines = ["| target (same run) | measured | goal | verdict |", "| --- | --: | --: | --- |"]
    for t in result["targets"]:
        shown = "–" if t["measured"] is None else f"{t['measured']:g}{t['unit']}"
        if t.get("interval"):
            shown += f" (95 %: {t['interval'][0]:g}–{t['interval'][1]:g})"
        lines.append(f"| {t['target']} | {shown} | {t['goal']} | **{t['verdict']}** |")
    return lines


def memory_table(result: dict) -> list[str]:
    """Cold start and resident memory of every peer."""
    lines = [
        "| peer | cold start s | workers | RSS per worker MiB | workers MiB | all processes MiB |",
        "| --- | --: | --: | --- | --: | --: |",
    ]
    for key in _present(result):
        peer = result["peers"][key]
        mem = peer.get("memory", {})
        per = ", ".join(f"{x:.0f}" for x in mem.get("worker_rss_mib", []))
        lines.append(
            f"| {peer['title']} | {peer.get('cold_start_s', float('nan')):.1f} "
            f"| {mem.get('workers', '–')} | {per} | {mem.get('workers_sum_mib', 0):.0f} "
            f"| {mem.get('total_mib', 0):.0f} |"
        )
    return lines


def batch_table(result: dict) -> list[str]:
    """Our large-batch timings, client and server side; empty when the run had none."""
    batch = result["peers"].get("ours", {}).get("batch", {})
    if not batch:
        return []
    rows = next(iter(batch.values()))["rows"]
    lines = [
        f"| our /predict_batch, {rows:,} rows | body | client median ms | server median ms |",
        "| --- | --: | --: | --: |",
    ]
    for shape, b in batch.items():
        lines.append(
            f"| `{shape}` | {b['body_bytes'] / 1e6:.2f} MB | {b['client_median_ms']:.1f} "
            f"| {b['server_median_ms'] if b['server_median_ms'] is not None else '–'} |"
        )
    return lines


def profile_markdown(prof: dict) -> list[str]:
    """Where our workers' CPU went under load, GC pauses, and the gc.freeze() experiment."""
    lines = [
        f"Profile of our `/predict` at c={prof['concurrency']} ({prof['seconds']} s of py-spy "
        f"on every worker, {prof['worker_samples']} busy samples; a fresh instance with the "
        "GC probe):",
        "",
        "| charged to | share of busy worker samples |",
        "| --- | --: |",
    ]
    lines += [f"| {k} | {v:.1f} % |" for k, v in prof["by_owner_pct"].items()]
    lines += ["", '| "our code" above, by function | share |', "| --- | --: |"]
    lines += [f"| `{k}` | {v:.1f} % |" for k, v in prof["our_code_by_function_pct"].items()]
    lines += ["", "| function, inclusive (with all it calls) | share |", "| --- | --: |"]
    lines += [f"| `{k}` | {v:.1f} % |" for k, v in prof["inclusive_pct"].items()]
    lines += [
        "",
        f"Garbage collection (probe) in the same window: about "
        f"{prof.get('gc_share_of_busy_samples_pct', 0):.0f} % of the busy samples above, charged "
        "by py-spy to whatever frame happened to allocate (a full pass shows up as one hot line).",
        "",
        "| worker | GC passes > 1 ms | GC time | of wall time | full (gen2) passes, ms |",
        "| --- | --: | --: | --: | --- |",
    ]
    for pid, g in prof.get("gc", {}).items():
        lines.append(
            f"| {pid} | {g['passes_over_1ms']} | {g['total_ms']:.0f} ms "
            f"| {g['pct_of_wall_time']} % | {', '.join(f'{x:.0f}' for x in g['gen2_ms'])} |"
        )
    exp = prof.get("gc_freeze_experiment")
    if exp:
        lines += [
            "",
            "Experiment, same instance after `gc.freeze()` in every worker (not the product):",
            "",
            "| c | requests/s | p50 ms | p99 ms | errors | gen2 passes, ms |",
            "| --: | --: | --: | --: | --: | --- |",
        ]
        for c, step in exp.items():
            if not c.isdigit():
                continue
            gen2 = ", ".join(f"{x:.0f}" for g in step["gc"].values() for x in g["gen2_ms"])
            lines.append(
                f"| {c} | {step['rps']:,.0f} | {step['p50_ms']:.1f} | {step['p99_ms']:.1f} "
                f"| {step['errors']} | {gen2 or 'none'} |"
            )
    return lines


def oip_markdown(result: dict) -> str:
    """The Open Inference Protocol comparison (``benchmarks.oip_peer``): every step, then
    the ratios of the same run."""
    lines = [oip_header(result), "", *oip_load_table(result), "", *oip_ratio_table(result)]
    return "\n".join(lines)


def oip_header(result: dict) -> str:
    """One line: what kind of run, when, on what machine, how loaded, how long each step."""
    load_avg = result["load_average"]
    return (
        f"**{result['kind']}** — {result['date']} — {result['machine']['nproc']} cores"
        f" ({result['machine']['cpu_model']}); load average {load_avg['start']} at start,"
        f" {load_avg['end']} at end; {result['settings']['duration']} s per step."
    )


def oip_load_table(result: dict) -> list[str]:
    """Requests/s and latency of both servers, per protocol, rows and concurrency."""
    lines = [
        "| server | protocol | rows | c | requests/s | p50 ms | p99 ms"
        " | errors | gRPC client CPU |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for entry in result["peers"].values():
        for key, s in entry["load"].items():
            protocol, n, c = key.split("/")
            cpu = s.get("client_cpu_share", "")
            lines.append(
                f"| {entry['title']} | {protocol} | {int(n):,} | {c} | {s['rps']:,.0f} |"
                f" {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']} | {cpu} |"
            )
    return lines


def oip_ratio_table(result: dict) -> list[str]:
    """Ours ÷ MLServer at the highest concurrency, with each target met or missed."""
    lines = [
        "| protocol | rows | c | ours ÷ MLServer requests/s (target ≥ 3) |"
        " ours ÷ MLServer p99 (target ≤ 1) |",
        "| --- | --: | --: | --: | --: |",
    ]
    for r in result["ratios"]:
        if r["rps_ratio"] is None:  # MLServer answered no request: nothing to compare
            rps_cell = p99_cell = "— (not measured: MLServer answered no request)"
        else:
            rps_mark = "met" if r["rps_target_met"] else "MISSED"
            p99_mark = "met" if r["p99_target_met"] else "MISSED"
            rps_cell = f"{r['rps_ratio']:.2f}× ({rps_mark})"
            p99_cell = f"{r['p99_ratio']:.3f} ({p99_mark})"
        lines.append(f"| {r['protocol']} | {r['rows']:,} | {r['c']} | {rps_cell} | {p99_cell} |")
    return lines


def _present(result: dict) -> list[str]:
    return [k for k in PEER_ORDER if k in result["peers"]]


def write(result: dict, out_dir: Path, update_readme: bool, name: str = "latest") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    if update_readme and README.exists():
        text = README.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            README.write_text(f"{head}{START}\n{markdown(result)}\n{END}{tail}")
    return path
