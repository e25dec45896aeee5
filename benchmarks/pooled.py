"""``python -m benchmarks.pooled FILE...``: the loop pair's ratios over the rounds of several
runs of one code.

One run's ratio moves by chance as far as its 95 % interval says (0.1-0.3x at 8 rounds a
side); pooling the rounds of several results files of the same code narrows it. Prints
the ratio of medians (loop_on / loop_off at the target concurrency) of requests/s and of
p99 over all the rounds, each with its bootstrap interval
(:func:`benchmarks.report.ratio_interval`). Reads only; writes nothing.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.report import ratio_interval

app = typer.Typer(help=__doc__, add_completion=False)


@app.command()
def main(
    files: Annotated[list[Path], typer.Argument(exists=True, help="Results files (JSON).")],
) -> None:
    """Pool the loop pair's rounds of ``files`` and print both ratios."""
    on: dict = {"rounds": []}
    off: dict = {"rounds": []}
    for path in files:
        result = json.loads(path.read_text())
        c = str(result["settings"]["target_concurrency"])
        on["rounds"] += result["peers"]["loop_on"]["load"][c]["rounds"]
        off["rounds"] += result["peers"]["loop_off"]["load"][c]["rounds"]
    for key, name in (("rps", "requests/s"), ("p99_ms", "p99")):
        ratio = statistics.median(r[key] for r in on["rounds"]) / statistics.median(
            r[key] for r in off["rounds"]
        )
        low, high = ratio_interval(on, off, key) or (float("nan"), float("nan"))
        typer.echo(
            f"{name}: {ratio:.2f}x on / off (95 %: {low:.2f}-{high:.2f}) over "
            f"{len(on['rounds'])} + {len(off['rounds'])} rounds of {len(files)} runs"
        )


if __name__ == "__main__":
    app()
