"""Load generators: ``wrk`` for one-flower requests, a timed client for the large batch request."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from harness.servers import Server
from training.schema import FEATURES, RAW_TO_FEATURE
from training.settings import PROJECT_DIR

LUA_SCRIPT = Path(__file__).with_name("post.lua")
RAW_CSV = PROJECT_DIR / "data" / "raw" / "Iris.csv"
ACCESS_LINE = re.compile(
    r"\(scheme=http,method=POST,path=(?P<path>[^,]+),type=[^,]*,length=(?P<length>\d+)\)"
    r" \(status=(?P<status>\d+)[^)]*\) (?P<ms>[\d.]+)ms"
)


@dataclass(frozen=True)
class WrkResult:
    concurrency: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    error_detail: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make bench installs it: apt-get install wrk)")


def run_wrk(
    url: str, body_file: Path, *, connections: int, duration_s: float, threads: int = 1
) -> WrkResult:
    """One wrk run: POST ``body_file`` over ``connections`` kept-alive connections.

    Errors are wrk's socket errors (connect, read, write, timeout) plus responses with a
    status of 400 or more (wrk counts those as "Non-2xx or 3xx"; our peers send no 3xx).
    """
    argv = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration_s:g}s"]
    argv += ["--timeout", "10s", "-s", str(LUA_SCRIPT), url, "--", str(body_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    seconds = data["duration_us"] / 1e6
    lat = data["latency_us"]
    return WrkResult(
        concurrency=connections,
        duration_s=round(seconds, 2),
        requests=data["requests"],
        rps=round(data["requests"] / seconds, 1),
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        errors=sum(data["errors"].values()),
        error_detail=data["errors"],
    )


def combine(steps: list[dict]) -> dict:
    """Several wrk runs at one concurrency as one step: medians, summed counts, every run.

    BentoML's workers share one listening socket and a worker accepts every connection
    that is waiting when it wakes, so how 32 connections split between workers (16+16 or
    1+31) changes from run to run and moves requests/s with it. The median of a few runs,
    each with new connections, is steadier than any one of them.
    """
    if len(steps) == 1:
        return steps[0]
    median = {k: statistics.median(s[k] for s in steps) for k in ("rps", "p50_ms", "p90_ms")}
    median |= {k: statistics.median(s[k] for s in steps) for k in ("p99_ms", "max_ms")}
    return {
        **steps[0],
        **median,
        "duration_s": round(sum(s["duration_s"] for s in steps), 2),
        "requests": sum(s["requests"] for s in steps),
        "errors": sum(s["errors"] for s in steps),
        "error_detail": {},
        "connections_per_process": [s["connections_per_process"] for s in steps],
        "rounds": steps,
    }


def iris_rows(n: int) -> list[tuple[float, ...]]:
    """``n`` real flowers: the raw Iris measurements, cycled."""
    with open(RAW_CSV, newline="") as f:
        base = [tuple(float(r[c]) for c in RAW_TO_FEATURE) for r in csv.DictReader(f)]
    return [base[i % len(base)] for i in range(n)]


def batch_bodies(n: int) -> dict[str, bytes]:
    """The two request shapes of ``/predict_batch`` for ``n`` flowers."""
    rows = iris_rows(n)
    records = [dict(zip(FEATURES, r, strict=True)) for r in rows]
    return {
        "records": json.dumps({"records": records}).encode(),
        "instances": json.dumps({"instances": [list(r) for r in rows]}).encode(),
    }


def time_batches(server: Server, body: bytes, n_rows: int, repeats: int) -> dict:
    """Median client-side and server-side latency of ``repeats`` batch requests.

    Client side: send to last response byte, on a kept-alive connection, after one warm-up.
    Server side: the latency BentoML's access log prints for each of those requests (from
    the ASGI call, headers parsed, to the last body chunk handed to the server).
    """
    url = server.url + "/predict_batch"
    headers = {"content-type": "application/json"}
    client_ms = []
    with httpx.Client(timeout=60) as client:
        first = client.post(url, content=body, headers=headers)
        first.raise_for_status()
        if len(first.json()["predictions"]) != n_rows:
            raise AssertionError(f"batch answered {len(first.json()['predictions'])} rows")
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post(url, content=body, headers=headers)
            client_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    server_ms = access_log_ms(server, "/predict_batch", len(body), repeats)
    return {
        "rows": n_rows,
        "body_bytes": len(body),
        "repeats": repeats,
        "client_ms": [round(x, 2) for x in client_ms],
        "client_median_ms": round(statistics.median(client_ms), 2),
        "server_ms": server_ms,
        "server_median_ms": round(statistics.median(server_ms), 2) if server_ms else None,
    }


def access_log_ms(server: Server, path: str, length: int, count: int) -> list[float]:
    """The last ``count`` 200 latencies logged for ``path`` with this request length."""
    deadline = time.monotonic() + 5
    while True:  # workers write their access log lines asynchronously
        found = [
            float(m["ms"])
            for m in ACCESS_LINE.finditer(server.log())
            if m["path"] == path and int(m["length"]) == length and m["status"] == "200"
        ]
        if len(found) >= count + 1 or time.monotonic() > deadline:
            return found[-count:] if len(found) >= count else []
        time.sleep(0.2)
