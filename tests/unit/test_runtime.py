"""The served model: ONNX parity with scikit-learn, fallback, atomic swaps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serving.runtime import ModelHolder, ModelIdentity, build, check_parity, probe_inputs
from training.model_io import LoadedClassifier
from training.schema import FEATURES, SPECIES

IDENTITY = ModelIdentity("iris-classifier", "7", "champion", "run", "bento")


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
def test_onnx_is_used_only_when_it_matches_scikit_learn(iris, estimator):
    x, y = iris
    x = x.set_axis(list(FEATURES), axis=1)
    estimator.fit(x, y)
    model = build(LoadedClassifier(estimator, SPECIES, FEATURES), IDENTITY)
    assert model.identity.runtime == "onnx" and model.fast
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
    assert check_parity(rf, rf, probe_inputs(200)) is None
    assert "label" in check_parity(rf, _Skewed(rf), probe_inputs(200))


def test_unconvertible_model_falls_back_to_scikit_learn(iris, caplog):
    x, y = iris

    class Odd(LogisticRegression):  # skl2onnx has no converter for unknown classes
        pass

    odd = Odd(max_iter=500).fit(x.to_numpy(), y)
    model = build(LoadedClassifier(odd, SPECIES, FEATURES), IDENTITY)
    assert model.identity.runtime == "sklearn" and not model.fast
    assert "serving scikit-learn" in caplog.text
    names, _ = model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))
    assert names == ["Iris-setosa"]


def test_holder_swaps_whole_models(iris):
    x, y = iris
    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(x.to_numpy(), y)
    first = build(LoadedClassifier(rf, SPECIES, FEATURES), IDENTITY, use_onnx=False)
    second = build(
        LoadedClassifier(rf, SPECIES, FEATURES),
        ModelIdentity("iris-classifier", "8", "champion", "r2", "registry"),
        use_onnx=False,
    )
    holder = ModelHolder(first)
    snapshot = holder.current
    assert holder.swap(second) is first
    assert snapshot.identity.version == "7" and holder.current.identity.version == "8"
