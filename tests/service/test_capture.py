"""Every answered prediction is captured once, with its id and version; capture never
fails a request; a clean stop loses nothing."""

from __future__ import annotations

import os
import re

import httpx
import pandas as pd
import pytest

from harness.servers import bento_server, capture_sink_pids, worker_pids

pytestmark = pytest.mark.integration

GOOD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
ROW = [6.7, 3.0, 5.2, 2.3]


def grpc_infer(server, rows):
    import grpc

    from serving.oip.proto import grpc_predict_v2_pb2 as pb
    from serving.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="iris-classifier")
    request.inputs.add(
        name="features", datatype="FP32", shape=[len(rows), 4]
    ).contents.fp32_contents.extend(v for row in rows for v in row)
    with grpc.insecure_channel(server.grpc_target) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)


def test_mixed_requests_on_two_workers_are_captured_exactly_once(trained_home, tmp_path):
    captures = tmp_path / "captures"
    env = {
        **trained_home.env,
        "IRIS_CAPTURE_DIR": str(captures),
        "IRIS_CAPTURE_FLUSH_S": "3600",  # nothing is flushed until the clean stop
        "IRIS_FOLLOW_REGISTRY": "false",
    }
    expected: dict[str, str] = {}  # prediction id -> species answered
    with bento_server(env, tmp_path / "logs", workers=2) as server:
        for i in range(40):
            # A new connection each time, so both workers take requests.
            if i % 4:
                r = httpx.post(server.url + "/predict", json=GOOD)
                assert r.status_code == 200
                body = r.json()
                assert r.headers["x-prediction-id"] == body["prediction_id"]
                expected[body["prediction_id"]] = body["species"]
            else:
                r = httpx.post(server.url + "/predict_batch", json={"instances": [ROW] * 3})
                assert r.status_code == 200
                base = r.headers["x-prediction-id"]
                for row, p in enumerate(r.json()["predictions"]):
                    assert p["prediction_id"] == f"{base}-{row}"
                    expected[p["prediction_id"]] = p["species"]
        version = r.json()["model"]["version"]
        # The Open Inference Protocol, over REST and gRPC, goes through the same capture.
        for _ in range(5):
            r = httpx.post(
                server.url + "/v2/models/iris-classifier/infer",
                json={
                    "inputs": [
                        {
                            "name": "features",
                            "shape": [2, 4],
                            "datatype": "FP32",
                            "data": [ROW, ROW],
                        }
                    ]
                },
            )
            assert r.status_code == 200, r.text
            base = r.json()["parameters"]["prediction_id"]
            assert r.headers["x-prediction-id"] == base
            for row, species in enumerate(r.json()["outputs"][0]["data"]):
                expected[f"{base}-{row}"] = species
            response = grpc_infer(server, [ROW, ROW, ROW])
            base = response.parameters["prediction_id"].string_param
            for row, species in enumerate(response.outputs[0].contents.bytes_contents):
                expected[f"{base}-{row}"] = species.decode()
        assert not list(captures.rglob("*.parquet"))  # all still queued in the workers
        workers = {str(pid) for pid in worker_pids(server)}
    # The server has stopped cleanly: everything it answered is on disk.
    frame = pd.read_parquet(captures)
    assert len(frame) == len(expected) == 30 + 10 * 3 + 5 * 2 + 5 * 3
    assert dict(zip(frame["prediction_id"], frame["species"], strict=True)) == expected
    assert set(frame["model_version"].astype(str)) == {version}
    assert set(frame["role"]) == {"champion"}
    assert frame["protocol"].value_counts().to_dict() == {
        "http": 60,
        "oip_rest": 10,
        "oip_grpc": 15,
    }
    pids = {re.search(r"part-(\d+)-", p.name).group(1) for p in captures.rglob("part-*.parquet")}
    assert pids and pids <= workers  # each file is written by one worker, named by its PID


def test_a_stalled_writer_drops_and_counts_but_answers_every_request(trained_home, tmp_path):
    env = {
        **trained_home.env,
        "IRIS_CAPTURE_DIR": str(tmp_path / "captures"),
        "IRIS_CAPTURE_MAX_PENDING": "5",
        "IRIS_CAPTURE_FLUSH_S": "3600",  # the writer never gets to flush while we load it
        "IRIS_FOLLOW_REGISTRY": "false",
    }
    with bento_server(env, tmp_path / "logs") as server, httpx.Client() as client:
        statuses = [client.post(server.url + "/predict", json=GOOD).status_code for _ in range(25)]
        metrics = client.get(server.url + "/metrics").text
    assert statuses == [200] * 25
    dropped = dict(
        re.findall(r'^iris_capture_dropped_total\{reason="(\w+)"\} ([0-9.]+)$', metrics, re.M)
    )
    assert dropped == {
        "queue_full": "20.0",  # the sink is behind: the queue holds 5
        **dict.fromkeys(("stopping", "not_spooled", "unreadable", "not_written"), "0.0"),
    }


def test_capture_off_writes_nothing(trained_home, tmp_path):
    captures = tmp_path / "captures"
    env = {
        **trained_home.env,
        "IRIS_CAPTURE": "false",
        "IRIS_CAPTURE_DIR": str(captures),
        "IRIS_FOLLOW_REGISTRY": "false",
    }
    with bento_server(env, tmp_path / "logs") as server:
        r = httpx.post(server.url + "/predict", json=GOOD)
        assert r.status_code == 200 and r.json()["prediction_id"]
    assert not list(captures.rglob("*.parquet"))


def test_a_hard_kill_loses_at_most_the_last_flush_interval(trained_home, tmp_path, record_property):
    """SIGKILL a worker under steady traffic: every answer missing from the files was given
    in the last IRIS_CAPTURE_FLUSH_S before the kill (plus the time a flush takes)."""
    import os
    import signal
    import time

    flush_s = 1.0
    captures = tmp_path / "captures"
    env = {
        **trained_home.env,
        "IRIS_CAPTURE_DIR": str(captures),
        "IRIS_CAPTURE_FLUSH_S": str(flush_s),
        "IRIS_FOLLOW_REGISTRY": "false",
    }
    answered: dict[str, float] = {}  # prediction id -> when the answer arrived
    with bento_server(env, tmp_path / "logs", workers=1) as server, httpx.Client() as client:
        (worker,) = worker_pids(server)
        started = time.monotonic()
        while time.monotonic() - started < 4.3:  # steady traffic across several flushes
            r = client.post(server.url + "/predict", json=GOOD)
            answered[r.json()["prediction_id"]] = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 60
        while worker_pids(server) in ([], [worker]):  # the arbiter starts a new worker
            assert time.monotonic() < deadline
            time.sleep(0.2)
    stored = set(pd.read_parquet(captures)["prediction_id"])
    order = list(answered)  # one worker, one client, one request at a time
    kept = [pid in stored for pid in order]
    # What survives is exactly everything up to the last flush: a prefix of the answers.
    assert kept == sorted(kept, reverse=True), "a capture was lost before a later one was kept"
    lost = {pid: answered[pid] for pid in order if pid not in stored}
    assert len(lost) < len(answered) / 2  # most answers were flushed before the kill
    window = killed - min(lost.values(), default=killed)
    # At most one flush interval, plus the time a flush itself takes on a busy machine.
    assert window <= flush_s + 1.0, (window, len(lost))
    record_property(
        "reliability",
        f"capture under SIGKILL: {len(lost)} of {len(answered)} answers lost, all from the"
        f" last {window:.2f} s before the kill (flush interval {flush_s:g} s)",
    )


def test_a_capturing_worker_loads_pyarrow_but_not_pandas(trained_home, tmp_path):
    """pandas would add about 40 MiB to every worker and its sink; both build and read
    Arrow columns without it, so once captures are on disk, each worker and its one
    capture sink have pyarrow mapped and not pandas. Each sink runs at nice 19, behind
    the workers that answer."""
    import time
    from pathlib import Path

    captures = tmp_path / "captures"
    env = {
        **trained_home.env,
        "IRIS_CAPTURE_DIR": str(captures),
        "IRIS_CAPTURE_FLUSH_S": "0.2",
        "IRIS_FOLLOW_REGISTRY": "false",
    }
    with bento_server(env, tmp_path / "logs") as server:
        assert httpx.post(server.url + "/predict", json=GOOD).status_code == 200
        r = httpx.post(server.url + "/predict_batch", json={"instances": [ROW] * 5})
        assert r.status_code == 200
        deadline = time.monotonic() + 15
        while len(pd.read_parquet(captures)) < 6 if captures.exists() else True:
            assert time.monotonic() < deadline, "nothing captured"
            time.sleep(0.2)
        workers, sinks = worker_pids(server), capture_sink_pids(server)
        assert sorted(sinks) == workers  # one capture sink per worker, started by it
        for pid in workers:  # IRIS_CAPTURE_SINK_NICE: 19 by default, never below the worker
            worker_nice = os.getpriority(os.PRIO_PROCESS, pid)
            assert os.getpriority(os.PRIO_PROCESS, sinks[pid]) == max(19, worker_nice)
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "/site-packages/pyarrow/" in maps  # it did spool Arrow files
            assert "/site-packages/pandas/" not in maps, f"worker {pid} imported pandas"
            sink_maps = Path(f"/proc/{sinks[pid]}/maps").read_text()
            assert "/site-packages/pyarrow/" in sink_maps  # it did write Parquet
            assert "/site-packages/pandas/" not in sink_maps, f"sink of {pid} imported pandas"
