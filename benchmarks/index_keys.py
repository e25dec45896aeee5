"""``python -m benchmarks.index_keys``: what a prediction id's order costs the prediction index.

Indexes single-flower answers into the real loop store (``training.loop_store``, SQLite
in a temporary folder, the default of ``make run``) a flush of ``--batch`` answers at a
time, as a capture sink does, once with the ids the server makes
(``serving.capture.new_id``, time first) and once with 128 random bits, and prints the
CPU and wall time per answer as the table grows, with the CPU time of the loop monitor's
live-quality query (per-minute counts) beside the scan of every answer of the hour that
it replaced. Nothing is written to the results folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import sqlalchemy as sa
import typer

from serving.capture import new_id
from training.answers import Answer
from training.loop_store import FeedbackStore, answers

app = typer.Typer(help=__doc__, add_completion=False)

CLASSES = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")
KINDS = {"time-ordered (new_id)": new_id, "random (128 bits)": lambda: os.urandom(16).hex()}


def flush(make_id, n: int) -> list[Answer]:
    predicted, inputs = np.zeros(1, dtype=np.intp), np.ones((1, 4), dtype=np.float32)
    now = time.time()
    return [
        Answer(make_id(), now, "1", "champion", True, CLASSES, predicted, inputs) for _ in range(n)
    ]


def live_quality_ms(store: FeedbackStore) -> tuple[float, float]:
    """CPU ms of the monitor's live-quality query over the last hour (per-minute counts),
    and of the scan of every answer in the hour that it replaced."""
    since = time.time() - 3600
    started = time.process_time()
    store.quality(since)
    summed = time.process_time() - started
    scan = (
        sa.select(answers.c.model_version, sa.func.sum(answers.c.n_rows))
        .where(answers.c.time >= since)
        .group_by(answers.c.model_version)
    )
    started = time.process_time()
    with store.engine.connect() as conn:
        conn.execute(scan).all()
    return 1e3 * summed, 1e3 * (time.process_time() - started)


@app.command()
def main(
    answers: Annotated[int, typer.Option(min=1000, help="Answers indexed per kind.")] = 400_000,
    batch: Annotated[int, typer.Option(min=1, help="Answers per flush.")] = 2_000,
    reports: Annotated[int, typer.Option(min=1, help="Lines printed per kind.")] = 8,
) -> None:
    """Index ``answers`` answers per kind of id and print the cost per answer."""
    flushes = answers // batch
    every = max(1, flushes // reports)
    with tempfile.TemporaryDirectory(prefix="iris-index-keys-") as work:
        for kind, make_id in KINDS.items():
            store = FeedbackStore(f"sqlite:///{Path(work) / kind[:4]}.sqlite")
            cpu = wall = 0.0
            for i in range(1, flushes + 1):
                served = flush(make_id, batch)
                cpu_0, wall_0 = time.process_time(), time.perf_counter()
                store.index(served)
                cpu += time.process_time() - cpu_0
                wall += time.perf_counter() - wall_0
                if i % every == 0 or i == flushes:
                    per = 1e6 / (every * batch)
                    summed, scanned = live_quality_ms(store)
                    typer.echo(
                        f"{kind}: {i * batch:>9,} answers held: {cpu * per:5.1f} µs CPU, "
                        f"{wall * per:5.1f} µs wall per answer (last {every * batch:,}); "
                        f"live quality {summed:.1f} ms (a scan of the answers: {scanned:.0f} ms)"
                    )
                    cpu = wall = 0.0
            store.engine.dispose()


if __name__ == "__main__":
    app()
