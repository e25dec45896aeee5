"""``python -m benchmarks.retention_lock``: how long the hourly retention delete keeps the
other writers of the prediction database (the capture sinks' index, ``/feedback``) waiting,
on the default SQLite file.

For each ``--answers`` count, fills a fresh SQLite database with that many answers older
than the retention window (an hour of one server's answers), then runs
``FeedbackStore.forget_before`` while another thread indexes one new answer every 20 ms, as
capture sinks do. It prints how long retention took, the writer's longest and 99th
percentile wait, and how many of its inserts failed (SQLite gives up after 5 s): for
retention in batches (``FORGET_BATCH_ROWS`` per transaction) and for the statements it ran
before (4a49ccc), all in one transaction. Nothing is written to the results folder;
``benchmarks/results/retention-lock.txt`` is a copy of runs.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

app = typer.Typer(help=__doc__, add_completion=False)

WRITE_EVERY_S = 0.02


def answer(answer_id: str, at: float):
    """One flower answered as such, as a capture sink indexes it."""
    from training.answers import Answer
    from training.schema import FEATURES, SPECIES

    inputs = np.ones((1, len(FEATURES)), dtype=np.float32)
    return Answer(answer_id, at, "1", "champion", True, SPECIES, np.array([0]), inputs)


def fill(store, answers: int, at: float) -> None:
    """``answers`` single-flower answers served at ``at``, indexed 10,000 at a time."""
    for start in range(0, answers, 10_000):
        store.index(answer(f"{i:032x}", at) for i in range(start, min(start + 10_000, answers)))


def forget_in_one_transaction(store, cutoff: float) -> int:
    """Retention as it was before batches (4a49ccc): its three deletes in one transaction."""
    from training.loop_store import answers, labels, served_counts

    with store.engine.begin() as conn:
        conn.execute(labels.delete().where(labels.c.served_time < cutoff))
        conn.execute(served_counts.delete().where(served_counts.c.minute < int(cutoff // 60)))
        return conn.execute(answers.delete().where(answers.c.time < cutoff)).rowcount


def measure(answers: int, batch_rows: int | None) -> str:
    """Retention of ``answers`` old answers beside a writer, in batches of ``batch_rows``
    (None: the old single transaction); one line of figures."""
    from training.loop_store import FeedbackStore

    with tempfile.TemporaryDirectory(prefix="iris-retention-") as tmp:
        store = FeedbackStore(f"sqlite:///{Path(tmp) / 'loop.sqlite'}")
        now = time.time()
        fill(store, answers, now - 7200)
        waits: list[float] = []
        failures: list[str] = []
        done = threading.Event()

        def writer() -> None:
            n = 0
            while not done.is_set():
                n += 1
                fresh = answer(f"f{n:031x}", time.time())
                started = time.perf_counter()
                try:
                    store.index([fresh])
                except Exception as e:  # noqa: BLE001 - counted: what a sink would log
                    failures.append(type(e).__name__)
                waits.append(time.perf_counter() - started)
                time.sleep(WRITE_EVERY_S)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.5)  # the writer's steady state first
        started = time.perf_counter()
        if batch_rows is None:
            removed = forget_in_one_transaction(store, now - 3600)
        else:
            removed = store.forget_before(now - 3600, batch_rows=batch_rows)
        took = time.perf_counter() - started
        done.set()
        thread.join()
        store.engine.dispose()
    assert removed == answers, (removed, answers)
    p99 = float(np.percentile(waits, 99)) * 1000
    how = f"batches of {batch_rows:,}" if batch_rows else "one transaction (before)"
    return (
        f"{answers:>9,} answers  {how:<24}  retention {took:6.1f} s  writer: {len(waits):5d}"
        f" inserts, longest wait {max(waits) * 1000:7.0f} ms, p99 {p99:6.0f} ms,"
        f" failed {len(failures)}"
    )


@app.command()
def main(
    answers: Annotated[list[int], typer.Option(help="answers to forget, per run")] = [  # noqa: B006
        300_000,
        1_000_000,
    ],
) -> None:
    """Each size, in batches and as before."""
    from training.loop_store import FORGET_BATCH_ROWS

    for n in answers:
        for batch_rows in (FORGET_BATCH_ROWS, None):
            typer.echo(measure(n, batch_rows))


if __name__ == "__main__":
    app()
