"""Only skops with our own trusted-type list is ever loaded; tampered files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.utils.tamper import tamper, truncate
from training.model_io import ModelLoadError, load_classifier


@pytest.fixture(scope="module")
def model_dir(trained_home) -> Path:
    import os

    os.environ["BENTOML_HOME"] = str(trained_home.bentoml_home)
    import bentoml

    return Path(bentoml.models.get("iris-classifier:latest").path_of("mlflow_model"))


def test_real_model_loads(model_dir):
    model = load_classifier(model_dir)
    assert model.class_names == ("Iris-setosa", "Iris-versicolor", "Iris-virginica")


@pytest.mark.parametrize("whitelist", [True, False], ids=["self-whitelisted", "plain"])
def test_tampered_model_is_refused_even_if_it_whitelists_itself(model_dir, tmp_path, whitelist):
    bad = tamper(model_dir, tmp_path / "bad", whitelist=whitelist)
    with pytest.raises(ModelLoadError, match="untrusted types"):
        load_classifier(bad)


def test_truncated_model_is_refused(model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="not a valid skops model"):
        load_classifier(truncate(model_dir, tmp_path / "cut"))


def test_pickle_format_is_refused(model_dir, tmp_path):
    import shutil

    copy = tmp_path / "pickled"
    shutil.copytree(model_dir, copy)
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["serialization_format"] = "cloudpickle"
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ModelLoadError, match="only skops"):
        load_classifier(copy)


def test_missing_mlmodel_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no MLmodel"):
        load_classifier(tmp_path)
