"""Ground truth back from a downstream system: /feedback, and live accuracy from it."""

from __future__ import annotations

import re
import time

import httpx
import pandas as pd
import pytest

from harness.servers import bento_server
from serving.schemas import ErrorResponse
from training.schema import FEATURES, SPECIES, TARGET

pytestmark = pytest.mark.integration

TOKEN = "feedback-token-1c9d"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def loop_server(trained_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    env = {
        **trained_home.env,
        "IRIS_FEEDBACK_TOKEN": TOKEN,
        "IRIS_CAPTURE_DIR": str(root / "captures"),
        "IRIS_LOOP_URI": f"sqlite:///{root / 'loop.sqlite'}",
        "IRIS_CAPTURE_FLUSH_S": "0.2",
        "IRIS_LOOP_INTERVAL_S": "0.5",
        "IRIS_FOLLOW_REGISTRY": "false",
    }
    with bento_server(env, root / "logs", workers=2) as server:
        server.captures = root / "captures"
        server.loop_env = env
        yield server


def gauge(server, name: str, version: str) -> float | None:
    text = httpx.get(server.url + "/metrics").text
    match = re.search(rf'^{name}\{{model_version="{version}"\}} ([0-9.e+-]+)$', text, re.M)
    return float(match.group(1)) if match else None


def test_feedback_drives_live_accuracy_whichever_worker_takes_it(loop_server, trained_home):
    test = pd.read_csv(trained_home.test_csv)
    answered: dict[str, str] = {}
    for _, row in test.iterrows():  # new connection each time: both workers answer
        r = httpx.post(loop_server.url + "/predict", json={f: row[f] for f in FEATURES})
        answered[r.json()["prediction_id"]] = r.json()["species"]
    version = r.json()["model"]["version"]
    truth = dict(zip(answered, test[TARGET], strict=True))
    # Also label a few answers wrongly on purpose, so accuracy is not trivially 1.
    for pid in list(truth)[:5]:
        truth[pid] = next(s for s in SPECIES if s != answered[pid])
    items = [{"prediction_id": pid, "species": s} for pid, s in truth.items()]
    half = len(items) // 2
    for chunk in (items[:half], items[half:]):  # two calls, two connections
        deadline = time.monotonic() + 15
        # The ids are indexed when the capture writer flushes (every 0.2 s here): until
        # then /feedback answers 404 and stores nothing, so asking again is safe.
        while (
            r := httpx.post(loop_server.url + "/feedback", json=chunk, headers=AUTH)
        ).status_code == 404:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.json() == {"added": len(chunk), "updated": 0, "unchanged": 0}
    # Expected accuracy, from the capture files (what was answered) and the labels sent.
    captured = pd.read_parquet(loop_server.captures)
    captured = captured[captured["prediction_id"].isin(truth)]
    assert len(captured) == len(truth)
    pairs = zip(captured["prediction_id"], captured["species"], strict=True)
    expected = sum(truth[p] == s for p, s in pairs)
    expected /= len(truth)
    deadline = time.monotonic() + 15
    while gauge(loop_server, "iris_live_accuracy", version) != pytest.approx(expected):
        assert time.monotonic() < deadline, gauge(loop_server, "iris_live_accuracy", version)
        time.sleep(0.3)
    assert expected < 1.0
    assert gauge(loop_server, "iris_predictions_labelled", version) >= len(truth)
    metrics = httpx.get(loop_server.url + "/metrics").text
    wrong = re.search(
        rf'^iris_feedback_total\{{correct="false",model_version="{version}"\}} ([0-9.]+)$',
        metrics,
        re.M,
    )
    assert wrong and float(wrong.group(1)) == sum(truth[p] != answered[p] for p in truth)

    # Sent again: idempotent. A different species: a correction.
    pid, species = items[-1]["prediction_id"], items[-1]["species"]
    again = httpx.post(loop_server.url + "/feedback", json=[items[-1]], headers=AUTH)
    assert again.json() == {"added": 0, "updated": 0, "unchanged": 1}
    other = next(s for s in SPECIES if s != species)
    fixed = httpx.post(
        loop_server.url + "/feedback",
        json=[{"prediction_id": pid, "species": other}],
        headers=AUTH,
    )
    assert fixed.json() == {"added": 0, "updated": 1, "unchanged": 0}


@pytest.mark.parametrize(
    ("body", "status", "field", "row"),
    [
        ([{"prediction_id": "0" * 32, "species": "Iris-setosa"}], 404, "prediction_id", 0),
        (  # one id, two different labels in one call: which is meant?
            [
                {"prediction_id": "0" * 32, "species": "Iris-setosa"},
                {"prediction_id": "1" * 32, "species": "Iris-setosa"},
                {"prediction_id": "0" * 32, "species": "Iris-virginica"},
            ],
            422,
            "species",
            2,
        ),
        ([{"prediction_id": "0" * 32, "species": "Iris-rose"}], 422, "species", 0),
        ([{"prediction_id": "not-an-id", "species": "Iris-setosa"}], 422, "prediction_id", 0),
        ([{"species": "Iris-setosa"}], 422, "prediction_id", 0),
        ({"prediction_id": "0" * 32, "species": "Iris-setosa"}, 422, None, None),
        ([], 422, None, None),
    ],
)
def test_bad_feedback_is_refused_by_name_and_stores_nothing(loop_server, body, status, field, row):
    r = httpx.post(loop_server.url + "/feedback", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = ErrorResponse.model_validate(r.json()).error
    if field:
        assert error.details[0].field == field and error.details[0].row == row


def test_feedback_needs_the_token(loop_server):
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = httpx.post(loop_server.url + "/feedback", json=[], headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def drift_gauges(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    found = dict(re.findall(r'^iris_drift_psi\{feature="(\w+)"\} ([0-9.e+-]+)$', text, re.M))
    rows = re.search(r"^iris_drift_window_rows ([0-9.]+)$", text, re.M)
    updated = re.search(r"^iris_loop_updated_timestamp_seconds ([0-9.e+]+)$", text, re.M)
    return {
        **{k: float(v) for k, v in found.items()},
        "rows": float(rows.group(1)),
        "updated": float(updated.group(1)),
    }


def test_drift_gauge_stays_low_in_distribution_and_crosses_on_a_shift(
    loop_server, trained_home, tmp_path
):
    """2,000 in-distribution rows: PSI under the alert's 0.25 everywhere. 2,000 rows with
    petal length +2 cm: petal length's PSI over it (and the alert's promtool case fires,
    monitoring/alerts.test.yml)."""
    import numpy as np

    train = pd.read_csv(trained_home.settings.train_csv)[list(FEATURES)].to_numpy()
    rng = np.random.default_rng(7)
    normal = train[rng.integers(0, len(train), 2000)]

    def send(rows) -> None:
        r = httpx.post(
            loop_server.url + "/predict_batch", json={"instances": rows.tolist()}, timeout=30
        )
        assert r.status_code == 200, r.text

    def settled(check) -> dict[str, float]:
        deadline = time.monotonic() + 15
        while not check(g := drift_gauges(loop_server)):
            assert time.monotonic() < deadline, g
            time.sleep(0.3)
        return g

    send(normal)
    calm = settled(lambda g: g["rows"] == 2000 and g.get("petal_length", 1) < 0.1)
    assert max(calm[f] for f in FEATURES) < 0.1, calm  # "stable" on every feature
    shifted = normal.copy()
    shifted[:, FEATURES.index("petal_length")] += 2.0
    send(shifted)
    moved = settled(lambda g: g.get("petal_length", 0) > 0.25)
    assert moved["sepal_width"] < 0.25, moved  # only the shifted feature moved
    assert moved["updated"] > calm["updated"] > time.time() - 60  # the gauges' age


def test_drift_report_is_one_self_contained_page(loop_server, trained_home, tmp_path):
    import numpy as np

    from harness.training import iris_train

    train = pd.read_csv(trained_home.settings.train_csv)[list(FEATURES)].to_numpy()
    shifted = train[np.random.default_rng(3).integers(0, len(train), 600)]
    shifted[:, FEATURES.index("petal_length")] += 2.0
    r = httpx.post(loop_server.url + "/predict_batch", json={"instances": shifted.tolist()})
    assert r.status_code == 200
    base = r.headers["x-prediction-id"]
    deadline = time.monotonic() + 15
    while not any(  # until the batch is in the capture files (flushed every 0.2 s)
        _holds(path, base) for path in loop_server.captures.rglob("*.parquet")
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    out = tmp_path / "report" / "drift.html"
    proc = iris_train(loop_server.loop_env, "drift-report", "--out", str(out), "--rows", "600")
    assert "largest PSI" in proc.stdout and "(petal_length)" in proc.stdout, proc.stdout
    page = out.read_text()
    assert page.count('src="data:image/png;base64,') >= 2  # plots inside, nothing to fetch
    assert "http://" not in page and "https://" not in page
    row = re.search(r"<td>petal_length</td><td>([0-9.]+)</td><td>([0-9.]+)</td><td>(\w+)", page)
    assert row and float(row.group(1)) > 0.25 and row.group(3) == "shifted", row
    assert "600 recent answers" in page


def test_drift_report_without_captures_names_what_is_missing(trained_home, tmp_path):
    from harness.training import iris_train

    env = {**trained_home.env, "IRIS_CAPTURE_DIR": str(tmp_path / "none")}
    out = tmp_path / "drift.html"
    proc = iris_train(env, "drift-report", "--out", str(out), check=False)
    assert proc.returncode == 1
    assert "no captured predictions in" in proc.stderr and "IRIS_CAPTURE_DIR" in proc.stderr
    assert not out.exists()


def _holds(path, base: str) -> bool:
    try:
        return bool(
            pd.read_parquet(path, columns=["prediction_id"])["prediction_id"]
            .str.startswith(base)
            .any()
        )
    except (OSError, ValueError):  # renamed or merged meanwhile
        return False


def test_feedback_on_the_last_row_of_a_grpc_batch_counts_through_another_replica(
    loop_server, trained_home, tmp_path
):
    """A 1,000-row gRPC answer is indexed as one answer; a label for its row 999 sent to a
    second server on the same loop database resolves to that row, and rows it did not
    have are unknown (404)."""
    from tests.service.test_capture import grpc_infer

    test = pd.read_csv(trained_home.test_csv)
    flowers = test[list(FEATURES)].to_numpy().tolist()
    rows = [flowers[i % len(flowers)] for i in range(1000)]
    response = grpc_infer(loop_server, rows)
    base = response.parameters["prediction_id"].string_param
    answered = [s.decode() for s in response.outputs[0].contents.bytes_contents]
    assert len(answered) == 1000
    wrong = next(s for s in SPECIES if s != answered[999])
    items = [
        {"prediction_id": f"{base}-999", "species": wrong},
        {"prediction_id": f"{base}-0", "species": answered[0]},
    ]
    replica_env = {**loop_server.loop_env, "IRIS_CAPTURE_DIR": str(tmp_path / "captures")}
    with bento_server(replica_env, tmp_path / "logs") as replica:
        deadline = time.monotonic() + 15
        while (
            r := httpx.post(replica.url + "/feedback", json=items, headers=AUTH)
        ).status_code == 404:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.json() == {"added": 2, "updated": 0, "unchanged": 0}
        for unknown, why in (
            (f"{base}-1000", "has rows 0-999"),
            (base, f"a batch answer of 1000 rows: label each as {base}-<row>"),
            (f"{base}-0999", "rows have no leading 0"),
            (f"{'0' * 32}-3", "never served here"),
        ):
            r = httpx.post(
                replica.url + "/feedback",
                json=[{"prediction_id": unknown, "species": wrong}],
                headers=AUTH,
            )
            assert r.status_code == 404, (unknown, r.text)
            assert why in r.json()["error"]["message"], r.text
        metrics = httpx.get(replica.url + "/metrics").text
    version = response.model_version
    wrong_total = re.search(
        rf'^iris_feedback_total\{{correct="false",model_version="{version}"\}} ([0-9.]+)$',
        metrics,
        re.M,
    )
    assert wrong_total and float(wrong_total.group(1)) == 1.0  # the replica counted row 999
    captured = pd.read_parquet(loop_server.captures)
    row = captured[captured["prediction_id"] == f"{base}-999"]
    assert row["species"].tolist() == [answered[999]]
    assert row[list(FEATURES)].to_numpy()[0].tolist() == pytest.approx(rows[999], rel=1e-6)
