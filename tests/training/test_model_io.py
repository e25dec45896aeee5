"""Safe model loading: skops with our own trusted-type list, never the model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skops.io
import yaml
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from training.model_io import MODEL_FILE, ModelLoadError, load_classifier
from training.schema import FEATURES, SPECIES

X = np.random.default_rng(0).uniform(0.1, 8.0, size=(30, len(FEATURES)))
Y = np.arange(30) % len(SPECIES)


class Sneaky(LogisticRegression):
    """Stands for any type an attacker might smuggle into a model file."""


def _model_dir(folder: Path, estimator, **overrides) -> Path:
    """An MLflow-style sklearn model folder: MLmodel plus model.skops."""
    folder.mkdir(parents=True, exist_ok=True)
    skops.io.dump(estimator, folder / MODEL_FILE)
    flavor = {
        "pickled_model": MODEL_FILE,
        "serialization_format": "skops",
        "skops_trusted_types": skops.io.get_untrusted_types(file=folder / MODEL_FILE),
    }
    mlmodel = {
        "flavors": {"sklearn": flavor},
        "metadata": {"class_names": list(SPECIES), "feature_names": list(FEATURES)},
    }
    for key, value in overrides.items():
        (flavor if key in flavor else mlmodel["metadata"])[key] = value
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


@pytest.mark.parametrize("estimator", [LogisticRegression(), RandomForestClassifier(5)])
def test_loads_our_candidates_with_names_from_metadata(tmp_path: Path, estimator) -> None:
    model = load_classifier(_model_dir(tmp_path / "m", estimator.fit(X, Y)))

    assert model.class_names == SPECIES
    assert model.feature_names == FEATURES
    np.testing.assert_array_equal(model.predict_proba(X), estimator.predict_proba(X))


def test_refuses_untrusted_types_even_when_the_model_trusts_them(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m", Sneaky().fit(X, Y))
    trusted_by_model = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]
    assert any("Sneaky" in t for t in trusted_by_model["skops_trusted_types"])

    with pytest.raises(ModelLoadError, match=r"untrusted types.*Sneaky"):
        load_classifier(folder)


def test_refuses_other_serialization_formats(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m", LogisticRegression().fit(X, Y))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["serialization_format"] = "cloudpickle"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    with pytest.raises(ModelLoadError, match="refusing serialization format 'cloudpickle'"):
        load_classifier(folder)


def test_refuses_a_corrupt_model_file(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m", LogisticRegression().fit(X, Y))
    (folder / MODEL_FILE).write_bytes(b"PK\x03\x04 not really a zip")

    with pytest.raises(ModelLoadError, match="not a valid skops model"):
        load_classifier(folder)


def test_refuses_class_names_that_do_not_match_the_estimator(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m", LogisticRegression().fit(X, Y), class_names=["Iris-setosa"])

    with pytest.raises(ModelLoadError, match="estimator and metadata disagree"):
        load_classifier(folder)


def test_refuses_a_folder_without_mlmodel(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no MLmodel file"):
        load_classifier(tmp_path)
