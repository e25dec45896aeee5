"""Metric labels stay bounded, and a dead worker's series leave with it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.metrics import forget_dead_workers
from serving.routing import endpoint_label


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/predict", "/predict"),
        ("/feedback", "/feedback"),
        ("/jobs/", "/jobs/"),
        ("/jobs/3f0c9a1e-2b7d-4c55-9d1e-0a2b3c4d5e6f", "/jobs/{job_id}"),
        ("/v2/models/iris-classifier/infer", "/v2/models/{model_name}/infer"),
        ("/v2/models/x/versions/7/ready", "/v2/models/{model_name}/versions/{v}/ready"),
        ("/v2/repository/models/x/load", "/v2/repository/models/{model_name}/load"),
        ("/wp-admin/setup.php", "other"),
        ("/predict/../../etc/passwd", "other"),
        ("/jobs/a/b", "other"),
    ],
)
def test_endpoint_label_is_a_route_template(path, label):
    assert endpoint_label(path) == label


def test_dead_workers_gauge_files_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: the PID no longer runs
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (dead.pid, alive.pid):
            (tmp_path / f"gauge_liveall_{pid}.db").write_bytes(b"")
            (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{dead.pid}.db").write_bytes(b"")  # counters keep their totals
        assert forget_dead_workers(str(tmp_path)) == [dead.pid]
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(
            [
                f"counter_{dead.pid}.db",
                f"gauge_liveall_{alive.pid}.db",
                f"gauge_livesum_{alive.pid}.db",
            ]
        )
    finally:
        alive.kill()
        alive.wait()


def test_a_zombie_worker_counts_as_dead(tmp_path):
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped yet: the process has exited but its PID still shows, as a zombie.
    for _ in range(100):
        if (Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z":
            break
        time.sleep(0.05)
    (tmp_path / f"gauge_liveall_{zombie.pid}.db").write_bytes(b"")
    try:
        assert forget_dead_workers(str(tmp_path)) == [zombie.pid]
    finally:
        zombie.wait()
