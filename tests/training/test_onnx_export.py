"""ONNX exported at training time beside each model, verified again where it is served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.homes import TrainedHome
from serving.champion_lookup import RegistryUnreachableError, champion
from serving.served_model import ModelIdentity, load_model_dir
from training import onnx_export
from training.model_io import load_classifier
from training.schema import CHAMPION, FEATURES
from training.settings import PROJECT_DIR

pytestmark = pytest.mark.integration
# Python source for a subprocess: which training-stack packages it has imported.
HEAVY_IMPORTED = (
    "heavy = sorted({'sklearn', 'skl2onnx', 'skops', 'mlflow', 'scipy', 'pandas'}"
    " & {n.split('.')[0] for n in sys.modules})\n"
)
IDENTITY = ModelIdentity("iris-classifier", "1", "champion", "run", "registry")


@pytest.fixture(scope="module")
def champion_dir(trained_home: TrainedHome, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry's champion folder, downloaded as a worker's fetch would."""
    import mlflow

    mlflow.set_tracking_uri(trained_home.tracking_uri)
    mlflow.set_registry_uri(trained_home.tracking_uri)
    dst = tmp_path_factory.mktemp("champion")
    return Path(
        mlflow.artifacts.download_artifacts(
            f"models:/iris-classifier/{trained_home.version}", dst_path=str(dst)
        )
    )


def test_every_registered_version_carries_a_checked_export(champion_dir, trained_home) -> None:
    packed = onnx_export.read(champion_dir)
    assert packed is not None
    test = pd.read_csv(trained_home.test_csv)
    # checked on the test set (first rows) plus the probes, as float32
    assert len(packed.inputs) == len(test) + onnx_export.PARITY_PROBES
    np.testing.assert_allclose(
        packed.inputs[: len(test)], test[list(FEATURES)].to_numpy(dtype=np.float32)
    )
    sklearn = load_classifier(champion_dir).estimator
    frame = pd.DataFrame(packed.inputs.astype(np.float64), columns=list(FEATURES))
    np.testing.assert_allclose(packed.expected, sklearn.predict_proba(frame), atol=0)
    assert packed.report["parity_max_abs_diff"] <= onnx_export.PARITY_ATOL
    run = trained_home.client().get_run(trained_home.result["best_run_id"])
    assert run.data.tags["onnx_export"] == "ok"
    # and the BentoML store's copy has it too
    import bentoml

    stored = Path(bentoml.models.get(trained_home.bento_tag).path_of("mlflow_model"))
    assert onnx_export.read(stored).report == packed.report


def test_a_worker_serves_the_export_without_scikit_learn_or_mlflow(champion_dir) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from serving.served_model import ModelIdentity, load_model_dir\n"
        f"m = load_model_dir(Path({str(champion_dir)!r}), "
        "ModelIdentity('iris-classifier', '1', 'champion', 'r', 'bento'))\n"
        + HEAVY_IMPORTED
        + "print(m.identity.runtime, m.predict([[5.1, 3.5, 1.4, 0.2]])[0][0], heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[-2] == "onnx Iris-setosa []", out.stdout + out.stderr


@pytest.mark.parametrize("damage", ["model", "parity"])
def test_a_damaged_export_is_not_served(champion_dir, tmp_path, caplog, damage) -> None:
    copy = Path(shutil.copytree(champion_dir, tmp_path / "m"))
    folder = copy / onnx_export.ONNX_DIR
    if damage == "model":  # bytes changed: no longer the file the report names
        (folder / onnx_export.MODEL_FILE).write_bytes(b"\0" * 64)
        reason = "SHA-256"
    else:  # recorded answers that the graph does not reproduce
        with np.load(folder / onnx_export.PARITY_FILE) as parity:
            inputs, expected = parity["inputs"], parity["expected"]
        np.savez_compressed(
            folder / onnx_export.PARITY_FILE, inputs=inputs, expected=expected[:, ::-1]
        )
        reason = "parity replay"
    model = load_model_dir(copy, IDENTITY)
    assert reason in caplog.text
    # scikit-learn was loaded instead (the worker never compiles a graph): answers still right
    assert model.identity.runtime == "sklearn" and not model.fast
    assert model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))[0] == ["Iris-setosa"]


def test_fetch_refuses_a_tampered_version_and_leaves_nothing(trained_home, tmp_path) -> None:
    from tests.utils.tamper import register_tampered

    # A copy of the registry database: the session's shared registry stays untouched.
    db = tmp_path / "mlflow.db"
    shutil.copy(trained_home.home / "mlflow.db", db)
    uri = f"sqlite:///{db}"
    version = register_tampered(uri, trained_home.version, tmp_path, "tampered")
    dest = tmp_path / "dest"
    done = subprocess.run(
        [sys.executable, "-m", "serving.fetch_model", "tampered", str(version), str(dest)],
        cwd=PROJECT_DIR,
        env={**trained_home.env, "IRIS_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3  # refused: the watcher will not retry it at every poll
    assert "untrusted types" in done.stderr.strip().splitlines()[-1]
    assert not dest.exists() and not list(tmp_path.glob(".dest*"))
    assert not (tmp_path / "pwned").exists()


def test_sqlite_lookup_agrees_with_mlflow(trained_home, tmp_path) -> None:
    client = trained_home.client()
    mv = client.get_model_version_by_alias("iris-classifier", CHAMPION)
    found = champion(trained_home.tracking_uri, "iris-classifier")
    assert found is not None and (found.version, found.run_id) == (str(mv.version), mv.run_id)
    assert champion(trained_home.tracking_uri, "no-such-model") is None
    assert champion(f"sqlite:///{tmp_path / 'absent.db'}", "iris-classifier") is None
    assert not (tmp_path / "absent.db").exists()  # read-only: a poll creates nothing
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(RegistryUnreachableError, match=r"junk\.db"):
        champion(f"sqlite:///{tmp_path / 'junk.db'}", "iris-classifier")


def test_rest_lookup_names_an_unreachable_registry() -> None:
    from harness.processes import free_port

    with pytest.raises(RegistryUnreachableError, match="unreachable"):
        champion(f"http://127.0.0.1:{free_port()}", "iris-classifier")


def test_export_report_is_json_with_versions(champion_dir) -> None:
    report = json.loads((champion_dir / "onnx" / "export.json").read_text())
    assert set(report["versions"]) == {"skl2onnx", "onnxruntime", "scikit-learn", "onnx"}
    assert report["target_opset"] == onnx_export.TARGET_OPSET


def test_an_export_that_is_not_this_models_is_replaced(champion_dir, tmp_path, caplog) -> None:
    """Export, report and parity record are self-consistent but belong to another model."""
    from sklearn.linear_model import LogisticRegression

    genuine = load_classifier(champion_dir).estimator
    copy = Path(shutil.copytree(champion_dir, tmp_path / "m"))
    shutil.rmtree(copy / onnx_export.ONNX_DIR)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 8, size=(90, 4))
    impostor = LogisticRegression(max_iter=500).fit(x, np.arange(90) % 3)
    assert onnx_export.ensure(copy, impostor, 4)
    fake_sha = onnx_export.read(copy).report["model_sha256"]

    assert onnx_export.ensure(copy, genuine, 4)
    assert "does not match its model" in caplog.text
    packed = onnx_export.read(copy)
    assert packed.report["model_sha256"] != fake_sha
    assert onnx_export.verify(packed, genuine) is None


def test_relative_sqlite_uri_is_read_from_the_working_directory(trained_home, monkeypatch) -> None:
    monkeypatch.chdir(trained_home.home)
    found = champion("sqlite:///mlflow.db", "iris-classifier")
    assert found is not None and found.version == trained_home.version


def test_the_watcher_swaps_in_a_new_champion_without_mlflow_in_process(
    trained_home, champion_dir
) -> None:
    """What a worker does when the champion moves: poll, fetch in a subprocess, load, swap."""
    code = (
        "import sys; from pathlib import Path\n"
        "from serving.reloader import ChampionWatcher\n"
        "from serving.served_model import ModelHolder, ModelIdentity, load_model_dir\n"
        "from training.settings import get_settings\n"
        "old = ModelIdentity('iris-classifier', '0', 'champion', 'old-run', 'bento')\n"
        f"holder = ModelHolder(load_model_dir(Path({str(champion_dir)!r}), old))\n"
        "swapped = ChampionWatcher(get_settings(), holder).check_once()\n"
        + HEAVY_IMPORTED
        + "m = holder.current.identity\n"
        "print(swapped, m.version, m.source, m.runtime, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_DIR,
        env=trained_home.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    last = out.stdout.strip().splitlines()[-1]
    assert last == f"True {trained_home.version} registry onnx []", out.stdout + out.stderr
