"""``python -m benchmarks.handoff``: what a request's hand-off to capture costs, timed alone.

Every answer gets an id (``new_id``), is described as a ``Chunk`` and copied into the
writer's queue (``CaptureWriter.submit``); once a second the writer's thread turns the
queue into a spool table (``AnswerColumns.table``). This times each step in-process with
``timeit`` for a single-flower answer (the ``/predict`` case), so the per-request cost of
capture in the worker can be told apart from the noise of whole-server runs. Nothing is
written to the results folder; ``benchmarks/results/handoff.txt`` is a copy of one run.
"""

from __future__ import annotations

import tempfile
import time
import timeit
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from serving.capture import CaptureWriter, Chunk, new_id
from serving.capture_columns import AnswerColumns
from training.schema import SPECIES

app = typer.Typer(help=__doc__, add_completion=False)


@app.command()
def main(
    number: Annotated[int, typer.Option(min=1000, help="Calls timed per step.")] = 200_000,
    answers: Annotated[int, typer.Option(min=1, help="Answers in the timed flush table.")] = 2000,
) -> None:
    """Time the capture hand-off of one single-flower answer, step by step."""
    rows = np.ones((1, 4), np.float32)
    proba = np.array([[0.1, 0.2, 0.7]], np.float32)

    def chunk() -> Chunk:
        return Chunk(
            time.time(), new_id(), True, rows, proba, SPECIES, "iris", "1", "champion", "http", 1.0
        )

    one = chunk()

    with tempfile.TemporaryDirectory() as folder:
        writer = CaptureWriter(Path(folder), max_pending_rows=10 * number)

        def submit() -> None:
            if writer._pending_rows >= answers:  # keep the queue the size a flush sees
                writer._queue.clear()
                writer._pending_rows = 0
            writer.submit(one)

        for name, step in (("new_id", new_id), ("Chunk(...)", chunk), ("submit", submit)):
            micros = timeit.timeit(step, number=number) / number * 1e6
            typer.echo(f"{name}: {micros:.2f} µs per answer")
        typer.echo("(Chunk(...) includes its new_id; submit includes AnswerColumns.add)")
    columns = AnswerColumns()
    for _ in range(answers):
        columns.add(one)
    millis = timeit.timeit(columns.table, number=200) / 200 * 1e3
    typer.echo(f"table() of {answers} answers: {millis:.2f} ms per flush")


if __name__ == "__main__":
    app()
