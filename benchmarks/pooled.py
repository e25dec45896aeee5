"""``python -m benchmarks.pooled FILE...``: the loop pair's ratios over the rounds of several
runs of one code.

One run's ratio moves by chance as far as its 95 % interval says (0.1-0.3x at 8 rounds a
side); pooling the rounds of several results files of the same code narrows it. Prints
the ratio of medians (loop_on / loop_off at the target concurrency) of requests/s and of
p99 over all the rounds, each with its bootstrap interval
(:func:`benchmarks.report.ratio_interval`), and a second interval that also resamples
the runs (runs first, with replacement, then each drawn run's rounds): rounds of one run
share its processes and its stretch of the machine's time, so the first interval, which
treats every round as independent, is too narrow when runs differ.

Text files are saved outputs of ``python -m benchmarks.loop_cpu``: their pairs' CPU ratios
(on / off) are pooled, with a 95 % interval over all pairs and one over the runs' means.
Reads only; writes nothing.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.loop_cpu import t_interval
from benchmarks.report import ratio_interval

app = typer.Typer(help=__doc__, add_completion=False)


@app.command()
def main(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True, help="Results files: JSON of benchmarks.run, text of benchmarks.loop_cpu."
        ),
    ],
) -> None:
    """Pool the loop pair's rounds of ``files`` and print both ratios."""
    cpu_files = [p for p in files if p.suffix == ".txt"]
    if cpu_files:
        pool_cpu(cpu_files)
    files = [p for p in files if p.suffix != ".txt"]
    if not files:
        return
    runs = []
    for path in files:
        result = json.loads(path.read_text())
        c = str(result["settings"]["target_concurrency"])
        runs.append(
            tuple(result["peers"][key]["load"][c]["rounds"] for key in ("loop_on", "loop_off"))
        )
    on = {"rounds": [r for run in runs for r in run[0]]}
    off = {"rounds": [r for run in runs for r in run[1]]}
    for key, name in (("rps", "requests/s"), ("p99_ms", "p99")):
        ratio = statistics.median(r[key] for r in on["rounds"]) / statistics.median(
            r[key] for r in off["rounds"]
        )
        low, high = ratio_interval(on, off, key) or (float("nan"), float("nan"))
        run_low, run_high = runs_interval(runs, key)
        typer.echo(
            f"{name}: {ratio:.2f}x on / off (95 %: {low:.2f}-{high:.2f} over rounds; "
            f"{run_low:.2f}-{run_high:.2f} over runs, then rounds) from "
            f"{len(on['rounds'])} + {len(off['rounds'])} rounds of {len(files)} runs"
        )


CPU_PAIR = re.compile(r"^pair \d+: on / off (?P<ratio>[0-9.]+)$", re.MULTILINE)


def pool_cpu(files: list[Path]) -> None:
    """Print the pooled CPU ratio of saved ``benchmarks.loop_cpu`` outputs."""
    runs = [[float(m["ratio"]) for m in CPU_PAIR.finditer(p.read_text())] for p in files]
    for path, run in zip(files, runs, strict=True):
        typer.echo(f"{path.name}: {len(run)} pairs")
    runs = [r for r in runs if r]
    if not runs:
        raise typer.BadParameter("no 'pair N: on / off R' lines in the text files")
    pairs = [r for run in runs for r in run]
    mean, low, high = t_interval(pairs)
    _, run_low, run_high = t_interval([statistics.mean(run) for run in runs])
    typer.echo(
        f"CPU per request: {mean:.3f}x on / off (95 %: {low:.3f}-{high:.3f} over pairs; "
        f"{run_low:.3f}-{run_high:.3f} over runs' means) from {len(pairs)} pairs of "
        f"{len(runs)} runs"
    )


def runs_interval(runs: list[tuple[list, list]], key: str, draws: int = 4000) -> tuple:
    """95 % interval of the pooled ratio of medians, resampling the runs (each keeping its
    two sides together) and then each drawn run's rounds; seeded."""
    rng = random.Random(0)
    ratios = []
    for _ in range(draws):
        on, off = [], []
        for run_on, run_off in rng.choices(runs, k=len(runs)):
            on += rng.choices([r[key] for r in run_on], k=len(run_on))
            off += rng.choices([r[key] for r in run_off], k=len(run_off))
        ratios.append(statistics.median(on) / statistics.median(off))
    ratios.sort()
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


if __name__ == "__main__":
    app()
