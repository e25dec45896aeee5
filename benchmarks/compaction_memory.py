"""``python -m benchmarks.compaction_memory``: the capture sink's peak memory while it
compacts an hour of one worker's files, for hours of different sizes.

For each size, writes that many capture files of ``--rows`` answers each (one per flush,
as a sink does) into a fresh folder, then runs ``CaptureFiles.compact`` in a process of its
own and prints how far its peak resident memory rose above what it held after importing
pyarrow (Linux's ``VmHWM``, reset first). ``--rev`` takes ``serving/capture_files.py``
from a git revision instead of the working tree, to compare with an older compaction.
Nothing is written to the results folder; ``benchmarks/results/compaction-memory.txt`` is
a copy of runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help=__doc__, add_completion=False)

MEASURE = """
import importlib.util, sys, time
source, folder, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = importlib.util.spec_from_file_location("serving.capture_files", source)
module = importlib.util.module_from_spec(spec)
sys.modules["serving.capture_files"] = module
spec.loader.exec_module(module)
import pyarrow.parquet  # noqa: F401 - imported before the baseline
from pathlib import Path

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak (VmHWM) restarts from what is resident now
base = kib("VmRSS:")
files = module.CaptureFiles(Path(folder), 30, 1 << 40, on_error=print)
started = time.perf_counter()
merged = files.compact(before=time.time() + 1, pid=pid)
print(f"{merged} {time.perf_counter() - started:.1f} {(kib('VmHWM:') - base) // 1024}")
"""


def write_files(folder: Path, files: int, rows: int) -> int:
    """``files`` capture files of ``rows`` answers each, as a sink writes them; the pid
    they are named after."""
    import numpy as np

    from serving.capture import CaptureWriter, Chunk, new_id
    from serving.capture_sink import Drain
    from training.schema import SPECIES

    rng = np.random.default_rng(0)
    writer = CaptureWriter(folder, max_pending_rows=10**8)
    drain = Drain(folder, os.getpid(), index=None, report=lambda *_: None)
    for _ in range(files):
        proba = rng.dirichlet(np.ones(3), size=rows).astype(np.float32)
        flowers = rng.uniform(1, 7, size=(rows, 4)).astype(np.float32)
        answer = (time.time(), new_id(), False, flowers, proba, SPECIES, "iris-classifier")
        writer.submit(Chunk(*answer, "1", "champion", "http", 0.5))
        writer.flush()
        drain.once()
    return os.getpid()


@app.command()
def main(
    files: Annotated[list[int], typer.Option(help="Files in the hour (repeat).")] = [300, 900],  # noqa: B006
    rows: Annotated[int, typer.Option(help="Answers per file.")] = 2000,
    rev: Annotated[str, typer.Option(help="Git revision of capture_files.py.")] = "",
) -> None:
    root = Path(tempfile.mkdtemp(prefix="iris-compaction-"))
    try:
        source = root / "capture_files.py"
        if rev:
            text = subprocess.run(
                ["git", "show", f"{rev}:serving/capture_files.py"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            source.write_text(text)
        else:
            shutil.copy(Path(__file__).parents[1] / "serving" / "capture_files.py", source)
        for n in files:
            folder = root / f"hour-{n}"
            pid = write_files(folder, n, rows)
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, str(source), str(folder), str(pid)],
                check=True,
                capture_output=True,
                text=True,
            )
            merged, seconds, rise = done.stdout.split()[-3:]
            print(
                f"{n} files x {rows} answers ({n * rows:,} rows): {merged} merged in "
                f"{seconds} s, peak memory +{rise} MiB ({rev or 'working tree'})"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app()
