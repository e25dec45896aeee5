"""Predictions over real HTTP from a real `bentoml serve` process."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from serving.schemas import BatchResponse, PredictResponse
from serving.served_model import BULK_ROWS
from training.model_io import load_classifier
from training.onnx_export import probe_inputs
from training.schema import FEATURES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def test_set(trained_home) -> pd.DataFrame:
    return pd.read_csv(trained_home.test_csv)


@pytest.fixture(scope="module")
def sklearn_model(trained_home):
    """The champion exactly as the store holds it, loaded with scikit-learn."""
    import os

    os.environ["BENTOML_HOME"] = str(trained_home.bentoml_home)
    import bentoml

    model = bentoml.models.get("iris-classifier:latest")
    return load_classifier(Path(model.path_of("mlflow_model")))


def test_predict_matches_scikit_learn_for_every_test_row(
    server, test_set, sklearn_model, trained_home
):
    expected = sklearn_model.estimator.predict_proba(test_set[list(FEATURES)])
    correct = 0
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i, row in test_set.iterrows():
            response = client.post("/predict", json={f: float(row[f]) for f in FEATURES})
            assert response.status_code == 200, response.text
            body = PredictResponse.model_validate(response.json())
            probs = np.array([body.probabilities[c] for c in sklearn_model.class_names])
            assert body.species == sklearn_model.class_names[int(expected[i].argmax())]
            np.testing.assert_allclose(probs, expected[i], atol=1e-5)
            assert probs.sum() == pytest.approx(1.0, abs=1e-5)
            assert body.model.name == "iris-classifier"
            assert body.model.version == trained_home.result["version"]
            assert body.model.alias == "champion"
            assert body.model.runtime == "onnx"  # the fast path, not the fallback
            correct += body.species == row["species"]
    assert correct / len(test_set) == pytest.approx(trained_home.result["metrics"]["test_accuracy"])
    # served from the export made at training, not compiled in the worker
    assert "Loaded the ONNX export of v1" in server.log()
    assert "compiling it in this process" not in server.log()


def test_batch_answers_equal_single_answers_in_order(server, test_set):
    records = [{f: float(row[f]) for f in FEATURES} for _, row in test_set.iterrows()]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        singles = [client.post("/predict", json=r).json() for r in records]
        by_records = client.post("/predict_batch", json={"records": records})
        by_rows = client.post(
            "/predict_batch", json={"instances": [list(r.values()) for r in records]}
        )
    for response in (by_records, by_rows):
        assert response.status_code == 200, response.text
        batch = BatchResponse.model_validate(response.json())
        assert len(batch.predictions) == len(records)
        for single, item in zip(singles, batch.predictions, strict=True):
            assert item.species == single["species"]
            assert item.probabilities == pytest.approx(single["probabilities"], abs=1e-6)
            assert sum(item.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_large_batch_on_every_core_gives_scikit_learns_labels(server, sklearn_model, test_set):
    """A batch of BULK_ROWS or more runs on the multi-threaded session; answers must not move."""
    probes = probe_inputs(3000, seed=7).round(1)  # measured to the millimetre, as in the data
    rows = np.vstack([probes, test_set[list(FEATURES)].to_numpy()])
    assert len(rows) >= BULK_ROWS
    response = httpx.post(
        f"{server.url}/predict_batch", json={"instances": rows.tolist()}, timeout=30
    )
    assert response.status_code == 200, response.text[:500]
    batch = BatchResponse.model_validate(response.json())
    assert batch.model.runtime == "onnx"
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    expected = sklearn_model.estimator.predict_proba(frame)
    labels = sklearn_model.estimator.predict(frame)
    got = np.array(
        [[p.probabilities[c] for c in sklearn_model.class_names] for p in batch.predictions]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p.species for p in batch.predictions] == [sklearn_model.class_names[i] for i in labels]


def test_canonical_flowers(server):
    cases = {
        "Iris-setosa": [5.1, 3.5, 1.4, 0.2],
        "Iris-versicolor": [6.0, 2.9, 4.5, 1.4],
        "Iris-virginica": [6.9, 3.1, 5.8, 2.3],
    }
    response = httpx.post(server.url + "/predict_batch", json={"instances": list(cases.values())})
    assert [p["species"] for p in response.json()["predictions"]] == list(cases)


def test_openapi_documents_both_endpoints_with_examples(server):
    spec = httpx.get(server.url + "/docs.json").json()
    for path in ("/predict", "/predict_batch", "/retrain"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    predict_input = next(s for name, s in schemas.items() if name.startswith("IrisFeatures"))
    assert predict_input["example"]["sepal_length"] == 5.1
    assert predict_input["additionalProperties"] is False
    assert httpx.get(server.url + "/").status_code == 200  # Swagger UI


def test_health_and_metrics(server):
    assert httpx.get(server.url + "/livez").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    httpx.post(
        server.url + "/predict",
        json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    )
    metrics = httpx.get(server.url + "/metrics").text
    assert 'iris_predictions_total{model_version="1",species="Iris-setosa"}' in metrics
    assert "iris_served_model_version{" in metrics
