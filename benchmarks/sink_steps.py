"""``python -m benchmarks.sink_steps``: what a capture sink's pass costs, step by step.

Spools files of single-flower champion answers (the ``/predict`` case) as a worker does,
then runs the steps of the sink's pass on each (``serving.capture_sink.Drain._process``:
read the spool file, find its flowers, build the Parquet rows, build the index's columns
of the answers and insert them into a fresh SQLite loop store, write the Parquet
files) and prints the CPU time of each, per answer (``time.process_time``; the first
files warm up and are not counted). The shadow's single model call per file is left out.
Nothing is written to the results folder; ``benchmarks/results/sink-steps.txt`` is a copy
of one run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from serving.capture import Chunk, new_id
from serving.capture_columns import AnswerColumns
from serving.capture_files import CaptureFiles
from serving.capture_spool import index_rows, read_spool, write_spool
from serving.capture_table import capture_table, spool_rows
from training.loop_store import FeedbackStore
from training.schema import SPECIES

app = typer.Typer(help=__doc__, add_completion=False)
STEPS = ("read", "flowers", "parquet rows", "index records", "index insert", "parquet write")
WARM = 3


@app.command()
def main(
    answers: Annotated[int, typer.Option(help="Answers per spool file (one flush).")] = 1200,
    files: Annotated[int, typer.Option(min=WARM + 1, help="Spool files.")] = 30,
) -> None:
    """Time each step of the sink's pass, per answer."""
    rows = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    proba = np.array([[0.9, 0.05, 0.05]], dtype=np.float32)
    work = Path(tempfile.mkdtemp(prefix="iris-sink-steps-"))
    try:
        store = FeedbackStore(work / "loop.sqlite")
        parquet = CaptureFiles(work, 30, 1 << 30, on_error=print, on_dropped=print)
        spent = dict.fromkeys(STEPS, 0.0)
        for k in range(files):
            queue = AnswerColumns()
            for _ in range(answers):
                queue.add(
                    Chunk(time.time(), new_id(), True, rows, proba, SPECIES, "iris-classifier",
                          "1", "champion", "http", 1.0)
                )  # fmt: skip
            path = write_spool(work / ".spool", queue.table(), os.getpid(), k, answers)
            marks = [time.process_time()]
            spooled = read_spool(path)
            marks.append(time.process_time())
            found = spool_rows(spooled)
            marks.append(time.process_time())
            table = capture_table(spooled, found)
            marks.append(time.process_time())
            indexed = index_rows(spooled, found)
            marks.append(time.process_time())
            store.index(indexed)
            marks.append(time.process_time())
            parquet.write(table, path.stem)
            marks.append(time.process_time())
            path.unlink()
            if k >= WARM:
                for step, start, end in zip(STEPS, marks, marks[1:], strict=False):
                    spent[step] += end - start
        counted = (files - WARM) * answers
        for step, seconds in spent.items():
            typer.echo(f"{step}: {1e6 * seconds / counted:.2f} µs per answer")
        typer.echo(f"total: {1e6 * sum(spent.values()) / counted:.2f} µs per answer")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()
