"""The served model: ONNX as served matches scikit-learn, no export when it cannot, atomic swaps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serving.served_model import (
    BULK_ROWS,
    ModelHolder,
    ModelIdentity,
    ServedModel,
    SklearnPredictor,
)
from training import onnx_export
from training.onnx_export import compare, probe_inputs
from training.onnx_model import OnnxClassifier, served_labels
from training.schema import FEATURES, SPECIES

IDENTITY = ModelIdentity("iris-classifier", "7", "champion", "run", "bento")


def onnx_model(estimator, identity: ModelIdentity = IDENTITY) -> ServedModel:
    """``estimator`` served as a worker serves an export: its graph in OnnxClassifier."""
    graph = OnnxClassifier(onnx_export.convert(estimator, len(FEATURES)))
    return ServedModel(identity, SPECIES, graph, True)


def sklearn_model(estimator, identity: ModelIdentity = IDENTITY) -> ServedModel:
    return ServedModel(identity, SPECIES, SklearnPredictor(estimator), False)


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True, as_frame=True)


@pytest.mark.parametrize(
    "estimator",
    [
        RandomForestClassifier(n_estimators=30, random_state=0),
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
    ],
    ids=["random_forest", "logistic_regression"],
)
def test_onnx_as_served_matches_scikit_learn(iris, estimator):
    x, y = iris
    x = x.set_axis(list(FEATURES), axis=1)
    estimator.fit(x, y)
    model = onnx_model(estimator)
    names, proba = model.predict(x.to_numpy())
    expected = estimator.predict_proba(x)
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    assert names == [SPECIES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


class _Skewed:
    """A predictor that disagrees with its reference on purpose."""

    def __init__(self, inner):
        self.inner = inner

    def predict_proba(self, features):
        return self.inner.predict_proba(features)[:, ::-1]


def test_parity_check_catches_disagreement(iris):
    x, y = iris
    rf = RandomForestClassifier(n_estimators=10, random_state=0).fit(x.to_numpy(), y)
    probes = probe_inputs(200)
    assert compare(rf.predict_proba(probes), rf.predict_proba(probes)) is None
    assert "label" in compare(rf.predict_proba(probes), _Skewed(rf).predict_proba(probes))


def test_unconvertible_model_gets_no_export(iris, tmp_path, caplog):
    x, y = iris

    class Odd(LogisticRegression):  # skl2onnx has no converter for unknown classes
        pass

    odd = Odd(max_iter=500).fit(x.to_numpy(), y)
    assert onnx_export.ensure(tmp_path, odd, len(FEATURES)) is False
    assert not (tmp_path / onnx_export.ONNX_DIR).exists()
    assert "ONNX conversion failed" in caplog.text


def test_holder_swaps_whole_models(iris):
    x, y = iris
    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(x.to_numpy(), y)
    first = sklearn_model(rf)
    second = sklearn_model(rf, ModelIdentity("iris-classifier", "8", "champion", "r2", "registry"))
    holder = ModelHolder(first)
    snapshot = holder.current
    assert holder.swap(second) is first
    assert snapshot.identity.version == "7" and holder.current.identity.version == "8"


def test_bulk_calls_keep_scikit_learns_labels_on_ties(iris):
    """Big calls run on several threads; forest ties (0.5/0.5) must still go to the first class."""
    x, y = iris
    forest = RandomForestClassifier(random_state=1).fit(x.to_numpy(), y)  # 100 trees
    model = onnx_model(forest)
    probes = probe_inputs(3 * BULK_ROWS, seed=3)
    expected = forest.predict_proba(probes)
    top = np.sort(expected, axis=1)
    assert (top[:, -1] == top[:, -2]).any(), "the probes should include exact ties"
    names, proba = model.predict(probes)
    assert names == [SPECIES[i] for i in forest.predict(probes)]
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    one_by_one = [model.predict(row[None, :])[0][0] for row in probes[:300]]
    assert one_by_one == names[:300]


def test_only_the_bulk_session_has_threads_and_they_do_not_spin(iris):
    """A spinning pool burns the cores the other workers need after every bulk call."""
    x, y = iris
    graph = OnnxClassifier(
        onnx_export.convert(LogisticRegression(max_iter=500).fit(x, y), len(FEATURES)),
        bulk_threads=2,
    )
    bulk = graph._bulk.get_session_options()
    assert bulk.intra_op_num_threads == 2
    assert bulk.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert graph._session.get_session_options().intra_op_num_threads == 1


class _Float32Noise:
    """Exact ties of the reference, broken by float32-sized noise in either direction."""

    def __init__(self, inner):
        self.inner = inner

    def predict_proba(self, features):
        proba = self.inner.predict_proba(features)
        noise = np.where(np.arange(proba.shape[1]) % 2, 3e-8, -3e-8)
        return proba + noise


def test_float32_noise_on_a_tie_is_not_a_label_flip():
    tie = np.array([[0.49999997, 0.50000003, 0.0], [0.2, 0.3, 0.5]])
    assert served_labels(tie).tolist() == [0, 2]

    class Ties:
        def predict_proba(self, features):
            return np.tile([0.5, 0.5, 0.0], (len(features), 1))

    probes = probe_inputs(50)
    assert (
        compare(Ties().predict_proba(probes), _Float32Noise(Ties()).predict_proba(probes)) is None
    )
