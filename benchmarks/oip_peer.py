"""``python -m benchmarks.oip_peer``: our Open Inference Protocol endpoints against MLServer.

MLServer with ``mlserver-sklearn`` is what a user would pick instead for a V2 endpoint.
This trains a fresh registry (the real pipeline), serves its champion Random Forest with
our service and with MLServer (its own venv, pinned in ``benchmarks/mlserver-requirements.txt``),
one server at a time on 127.0.0.1, and loads both with the same V2 infer requests: REST
(``wrk``) and gRPC (``benchmarks.grpc_load``), 1 row and 1,000 rows, at each concurrency.
Results: ``benchmarks/results/oip-latest.json`` and a table in ``benchmarks/README.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer

from benchmarks import launch, load, report
from harness.processes import free_port
from harness.servers import BIN
from harness.training import train_home
from harness.venvs import venv_python
from serving.oip.proto import grpc_predict_v2_pb2 as pb

app = typer.Typer(help=__doc__, add_completion=False)
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MLSERVER_REQUIREMENTS = HERE / "mlserver-requirements.txt"
MODEL = "iris-classifier"
INFER = f"/v2/models/{MODEL}/infer"
MARKERS = (report.OIP_START, report.OIP_END)
# MLServer's sklearn runtime names its outputs after the method; ours returns both by default.
MLSERVER_OUTPUTS = ("predict", "predict_proba")


@app.command()
def main(
    duration: Annotated[int, typer.Option(min=1, help="Seconds of load per step.")] = 10,
    warmup: Annotated[int, typer.Option(min=1, help="Seconds of unmeasured load first.")] = 2,
    concurrency: Annotated[list[int], typer.Option(help="Concurrent clients (repeat).")] = [1, 32],  # noqa: B006
    rows: Annotated[list[int], typer.Option(help="Rows per request (repeat).")] = [1, 1000],  # noqa: B006
    out: Annotated[Path, typer.Option(help="Folder for the results file.")] = RESULTS,
    result_name: Annotated[
        str, typer.Option(help="Results file name without .json (e.g. oip-1 for a repeat).")
    ] = "oip-latest",
    readme: Annotated[bool, typer.Option("--readme/--no-readme")] = True,
) -> None:
    """Measure our V2 REST and gRPC against MLServer's, same model, same requests."""
    signal.signal(signal.SIGTERM, _interrupt)
    load.require_wrk()
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="iris-oip-bench-"))
    ok = False
    try:
        result = run(work, duration=duration, warmup=warmup, concurrency=concurrency, rows=rows)
        result["load_average"] = {"start": load_start, "end": round(os.getloadavg()[0], 2)}
        smoke = duration < 10 or load_start > 0.5
        result["kind"] = "SMOKE RUN, not final" if smoke else "Full run"
        result["ratios"] = ratios(result, max(concurrency))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{result_name}.json").write_text(json.dumps(result, indent=2) + "\n")
        text = report.oip_markdown(result)
        if readme:
            _write_readme(text)
        typer.echo(text)
        ok = True
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            typer.echo(f"work folder kept (server logs in {work}/logs)")


def run(work: Path, **opts) -> dict:
    typer.echo(f"training a fresh registry in {work}/home ...")
    trained = train_home(work / "home")
    if trained.result["best_candidate"] != "random_forest":
        raise AssertionError(f"expected a Random Forest champion, got {trained.result}")
    typer.echo("MLServer venv (built once under /var/tmp) ...")
    mls_python = venv_python(
        MLSERVER_REQUIREMENTS, Path("/var/tmp/iris-mlserver"), "mlserver, mlserver_sklearn"
    )
    peers = {
        "ours": our_peer(trained.env, work),
        "mlserver": mlserver_peer(mls_python, trained, work),
    }
    result: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "champion": {"version": trained.version, "run_id": trained.result["best_run_id"]},
        "settings": {**opts, "wrk": load.wrk_version(), "grpc_client": "benchmarks.grpc_load"},
        "peers": {},
    }
    for key, (peer, grpc_port) in peers.items():
        typer.echo(f"== {peer.title}")
        entry = result["peers"][key] = {"title": peer.title, "settings": peer.settings, "load": {}}
        with launch.running(peer, work) as live:
            entry["cold_start_s"] = round(live.cold_start_s, 2)
            outputs = () if key == "ours" else MLSERVER_OUTPUTS
            for n in opts["rows"]:
                rest_file, grpc_file = write_bodies(work, key, n, outputs)
                check(peer.url, rest_file, n)
                for protocol in ("rest", "grpc"):
                    for c in opts["concurrency"]:
                        step = measure(
                            protocol,
                            peer.url,
                            f"127.0.0.1:{grpc_port}",
                            rest_file,
                            grpc_file,
                            c,
                            opts,
                        )
                        entry["load"][f"{protocol}/{n}/{c}"] = step
                        typer.echo(
                            f"   {protocol} {n:>4} row(s) c={c:<2}: {step['rps']:>8,.0f} req/s,"
                            f" p50 {step['p50_ms']:.2f} ms, p99 {step['p99_ms']:.2f} ms,"
                            f" errors {step['errors']}"
                            + (
                                f", client cpu {step['client_cpu_share']}"
                                if protocol == "grpc"
                                else ""
                            )
                        )
            entry["memory"] = launch.memory(live.server)
    return result


def our_peer(env: dict[str, str], work: Path) -> tuple[launch.Peer, int]:
    port, grpc_port = free_port(), free_port()
    home = launch.private_bentoml_home(Path(env["BENTOML_HOME"]), work / "bentoml-home-ours")
    argv = [str(BIN / "bentoml"), "serve", launch.OUR_TARGET, "--host", "127.0.0.1"]
    peer = launch.Peer(
        "ours",
        "our service (V2)",
        [*argv, "--port", str(port)],
        {
            **env,
            "BENTOML_HOME": str(home),
            "IRIS_GRPC_PORT": str(grpc_port),
            "IRIS_GRPC_HOST": "127.0.0.1",
            "IRIS_MAX_BODY_BYTES": str(8 << 20),
        },
        port,
        "/readyz",
        INFER,
        {},
        {
            "server": f"bentoml serve {launch.OUR_TARGET}",
            "workers": f"cpu_count ({os.cpu_count()})",
            "model": "ONNX Runtime (the export made at training)",
            "outputs": "both (default)",
        },
    )
    return peer, grpc_port


def mlserver_peer(python: Path, trained, work: Path) -> tuple[launch.Peer, int]:
    """MLServer's model folder with the champion as joblib (what mlserver-sklearn loads)."""
    folder = work / "mlserver"
    model_dir = folder / MODEL
    model_dir.mkdir(parents=True)
    export_joblib(trained, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": trained.version},
            }
        )
    )
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "debug": False,
            }
        )
    )
    env = {
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/root"),
    }
    peer = launch.Peer(
        "mlserver",
        "MLServer 1.7.1 + mlserver-sklearn",
        [str(python.parent / "mlserver"), "start", str(folder)],
        env,
        port,
        "/v2/health/ready",
        INFER,
        {},
        {
            "server": "mlserver start (mlserver_sklearn.SKLearnModel)",
            "parallel_workers": "1 (MLServer's default)",
            "model": "scikit-learn (joblib)",
            "outputs": "predict, predict_proba (asked for, to match ours)",
            "debug": "false",
        },
    )
    return peer, grpc_port


def export_joblib(trained, path: Path) -> None:
    """The registered champion, loaded with skops and our trusted types, saved with joblib."""
    import joblib

    from harness.state import download_version
    from training.model_io import load_classifier

    folder = download_version(trained.tracking_uri, MODEL, trained.version, path.parent / "src")
    joblib.dump(load_classifier(folder).estimator, path)
    shutil.rmtree(path.parent / "src", ignore_errors=True)


def write_bodies(work: Path, key: str, n: int, outputs: tuple[str, ...]) -> tuple[Path, Path]:
    """The same V2 request as JSON (REST) and as a serialized ModelInferRequest (gRPC)."""
    flowers = np.asarray(load.iris_rows(n), dtype=np.float32)
    rest = {
        "inputs": [
            {
                "name": "features",
                "shape": [n, 4],
                "datatype": "FP32",
                "data": flowers.ravel().tolist(),
            }
        ]
    }
    if outputs:
        rest["outputs"] = [{"name": o} for o in outputs]
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[n, 4])
    tensor.contents.fp32_contents.extend(flowers.ravel().tolist())
    for o in outputs:
        request.outputs.add(name=o)
    rest_file, grpc_file = work / f"{key}-{n}.json", work / f"{key}-{n}.pb"
    rest_file.write_text(json.dumps(rest))
    grpc_file.write_bytes(request.SerializeToString())
    return rest_file, grpc_file


def check(url: str, rest_file: Path, n: int) -> None:
    """One request first: a 200 whose first output has one answer per row."""
    response = httpx.post(
        url + INFER,
        content=rest_file.read_bytes(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    response.raise_for_status()
    first = response.json()["outputs"][0]
    if first["shape"][0] != n:
        raise AssertionError(f"{url} answered shape {first['shape']} for {n} rows")


def measure(
    protocol: str, url: str, target: str, rest_file: Path, grpc_file: Path, c: int, opts: dict
) -> dict:
    if protocol == "rest":
        load.run_wrk(url + INFER, rest_file, connections=c, duration_s=opts["warmup"])
        return load.run_wrk(
            url + INFER, rest_file, connections=c, duration_s=opts["duration"]
        ).to_dict()
    grpc_run(target, grpc_file, c, opts["warmup"])
    return grpc_run(target, grpc_file, c, opts["duration"])


def grpc_run(target: str, request_file: Path, c: int, seconds: int) -> dict:
    argv = [
        sys.executable,
        "-m",
        "benchmarks.grpc_load",
        target,
        str(request_file),
        "--concurrency",
        str(c),
        "--duration",
        str(seconds),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 120, cwd=HERE.parent, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"grpc_load failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(result: dict, target_c: int) -> list[dict]:
    """Ours ÷ MLServer at the highest concurrency: requests/s (target ≥ 3) and p99 (≤ 1)."""
    ours, mls = result["peers"]["ours"]["load"], result["peers"]["mlserver"]["load"]
    found = []
    for key in ours:
        protocol, n, c = key.split("/")
        if int(c) != target_c or key not in mls:
            continue
        answered = mls[key]["rps"] > 0 and mls[key]["p99_ms"] > 0
        # MLServer answered nothing in the window (a loaded machine, a 1 s smoke run): its
        # rate and p99 are unknown, not zero, and no ratio is made of them.
        rps = ours[key]["rps"] / mls[key]["rps"] if answered else None
        p99 = ours[key]["p99_ms"] / mls[key]["p99_ms"] if answered else None
        found.append(
            {
                "protocol": protocol,
                "rows": int(n),
                "c": int(c),
                "rps_ratio": round(rps, 2) if rps is not None else None,
                "rps_target_met": rps >= 3 if rps is not None else None,
                "p99_ratio": round(p99, 3) if p99 is not None else None,
                "p99_target_met": p99 <= 1 if p99 is not None else None,
            }
        )
    return found


def _write_readme(text: str) -> None:
    path = HERE / "README.md"
    content = path.read_text()
    start, end = MARKERS
    if start not in content:
        content += f"\n{start}\n{end}\n"
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    app()
