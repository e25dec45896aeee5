"""The committed benchmark still runs end to end (short steps, two peers, no profile).

Its numbers are not checked here (timings on a shared machine are noise); what is checked
is that the script trains, serves, loads and reports, so that ``make bench`` cannot rot
between the runs whose results are committed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.containers import unavailable
from training.settings import PROJECT_DIR

README = PROJECT_DIR / "benchmarks" / "README.md"


@pytest.mark.timeout(600)
def test_benchmark_smoke_run_reports_every_measure(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        unavailable("wrk is not installed (apt-get install wrk)", what="wrk")
    readme_before = README.read_bytes()
    argv = [sys.executable, "-m", "benchmarks.run", "--duration", "1", "--warmup", "1"]
    argv += ["--concurrency", "1", "--concurrency", "4", "--peers", "ours", "--peers", "noop"]
    argv += ["--peers", "loop_on", "--peers", "loop_off"]
    argv += ["--rounds", "2"]
    argv += ["--batch-rows", "2000", "--batch-repeats", "2", "--profile-seconds", "0"]
    argv += ["--out", str(tmp_path), "--no-readme"]
    done = subprocess.run(
        argv, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=540, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["kind"].startswith("SMOKE RUN")
    assert set(result["peers"]) == {"ours", "noop", "loop_on", "loop_off"}
    for key, peer in result["peers"].items():
        assert "error" not in peer, f"{key}: {peer.get('error')}"
        for c in ("1", "4"):
            step = peer["load"][c]
            assert step["requests"] > 0 and step["errors"] == 0, (key, c, step)
            assert 0 < step["p50_ms"] <= step["p99_ms"], (key, c, step)
        assert len(peer["load"]["4"]["rounds"]) == 2  # the target concurrency, run twice
        assert peer["memory"]["workers"] >= 1 and peer["cold_start_s"] > 0
    ours = result["peers"]["ours"]
    assert set(ours["batch"]) == {"records", "instances"}
    for shape, batch in ours["batch"].items():
        assert batch["rows"] == 2000 and batch["server_median_ms"] > 0, (shape, batch)
    measured = {t["target"]: t for t in result["targets"]}
    noop_ratio = next(t for name, t in measured.items() if "ours / no-op" in name and "rps" in name)
    assert noop_ratio["measured"] > 0
    assert any("2,000-row batch (records)" in name for name in measured)
    # The loop peer really captured and shadow-scored under load; the other captured nothing.
    on, off = result["peers"]["loop_on"]["loop"], result["peers"]["loop_off"]["loop"]
    assert on["captured"] > 100 and on["shadow_scored"] > 100, on
    assert off["captured"] == 0 and not off["shadow_scored"], off  # None: no series at all
    # The pair ran together, its rounds alternating: on off, then off on.
    starts = {
        key: [r["started"] for r in result["peers"][key]["load"]["4"]["rounds"]]
        for key in ("loop_on", "loop_off")
    }
    assert starts["loop_on"][0] < starts["loop_off"][0] < starts["loop_off"][1], starts
    assert starts["loop_off"][1] < starts["loop_on"][1], starts
    # A pair's round that most connections reached through one worker is run again (and
    # kept aside): each worker must hold at least half its even share (here 1 of 4).
    for key in ("loop_on", "loop_off"):
        for skipped in result["peers"][key]["load"]["4"].get("unbalanced_rounds_run_again", []):
            spread = skipped["connections_per_process"]
            assert len(spread) < 2 or min(spread.values()) < 1, (key, spread)
    loop = next(t for name, t in measured.items() if "capture+shadow on / off" in name)
    assert loop["measured"] > 0
    assert loop["interval"] is None  # 2 rounds a side: too few for a bootstrap interval
    assert README.read_bytes() == readme_before, "--no-readme must leave the README alone"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlserver_comparison_smoke_run(tmp_path: Path) -> None:
    """`python -m benchmarks.oip_peer` serves the champion with both servers and loads both
    protocols at every size and concurrency without an error."""
    if shutil.which("wrk") is None:
        unavailable("wrk is not installed (apt-get install wrk)", what="wrk")
    readme_before = README.read_bytes()
    # 2 s a step: in 1 s on a loaded machine MLServer once answered no request at all.
    argv = [sys.executable, "-m", "benchmarks.oip_peer", "--duration", "2", "--warmup", "1"]
    argv += ["--concurrency", "1", "--concurrency", "4", "--rows", "1", "--rows", "50"]
    argv += ["--out", str(tmp_path), "--no-readme"]
    done = subprocess.run(
        argv, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=840, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "oip-latest.json").read_text())
    assert set(result["peers"]) == {"ours", "mlserver"}
    expected = {f"{p}/{n}/{c}" for p in ("rest", "grpc") for n in (1, 50) for c in (1, 4)}
    for key, peer in result["peers"].items():
        assert set(peer["load"]) == expected, key
        for step_key, step in peer["load"].items():
            assert step["requests"] > 0 and step["errors"] == 0, (key, step_key, step)
    assert {(r["protocol"], r["rows"]) for r in result["ratios"]} == {
        (p, n) for p in ("rest", "grpc") for n in (1, 50)
    }
    assert README.read_bytes() == readme_before


def test_retention_lock_smoke_run() -> None:
    """The retention benchmark forgets every answer it filled, in either mode (it asserts
    so), and reports the writer it ran beside."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.retention_lock", "--answers", "3000"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2, out
    for line, how in zip(out, ("batches of 10,000", "one transaction (before)"), strict=True):
        assert how in line and "failed 0" in line, line
        assert int(line.split("writer:")[1].split()[0]) >= 1, line
