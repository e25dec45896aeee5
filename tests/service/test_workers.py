"""What each serving worker process runs on, read from the live processes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from harness.servers import worker_pids

pytestmark = pytest.mark.integration

# Packages with native libraries, so that /proc/PID/maps shows them once imported (pure
# Python ones such as mlflow never appear there: tests/training/test_onnx_export.py checks
# sys.modules of a worker-style process instead).
# pyarrow is not among them: the capture writer needs it to write Parquet (about 65 MiB
# per worker; IRIS_CAPTURE=false never imports it). The writer never imports pandas
# (tests/unit/test_capture.py::test_writing_captures_does_not_import_pandas).
HEAVY = ("sklearn", "scipy")


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_workers_run_on_uvloop_and_onnx_without_the_training_stack(server):
    assert (
        httpx.post(
            f"{server.url}/predict",
            json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
        ).json()["model"]["runtime"]
        == "onnx"
    )
    pids = worker_pids(server)
    assert pids
    for pid in pids:
        maps = _mapped(pid)
        assert "/uvloop/" in maps, f"worker {pid} is not on uvloop"
        assert "/onnxruntime/" in maps
        # native libraries of the training stack: none is loaded in a serving worker
        loaded = sorted(name for name in HEAVY if f"/site-packages/{name}/" in maps)
        assert loaded == [], f"worker {pid} loaded {loaded}"
