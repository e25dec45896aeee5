"""`bentoml build` from the checkout, and the built Bento serving with no registry."""

from __future__ import annotations

import time

import httpx
import pytest

from harness.servers import PROJECT_DIR, bento_server, free_port
from harness.training import BUILD_SECRET as SECRET
from scripts.serve_requirements import locked

pytestmark = pytest.mark.integration


def test_bento_packs_code_data_and_pins_the_champion(trained_home, built_bento):
    version = built_bento.split(":")[1]
    root = trained_home.bentoml_home / "bentos" / "iris_classifier" / version
    src = root / "src"
    for path in ("service.py", "training/pipeline.py", "serving/runtime.py", "data/raw/Iris.csv"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists() and not (src / "notebooks").exists()
    manifest = (root / "bento.yaml").read_text()
    assert f"iris-classifier:v{trained_home.result['version']}-" in manifest
    # The image installs exactly the locked runtime closure: no re-resolution at build time.
    requirements = root / "env" / "python" / "requirements.txt"
    assert locked(requirements) == locked(PROJECT_DIR / "requirements-serve.txt")
    assert not (root / "env" / "python" / "requirements.lock.txt").exists()
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_built_bento_serves_with_the_registry_unreachable(trained_home, built_bento, tmp_path):
    env = {
        **trained_home.env,
        "IRIS_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "IRIS_RELOAD_INTERVAL_S": "0.5",
        "IRIS_HOME": str(tmp_path / "state"),
    }
    with bento_server(env, tmp_path, target=built_bento) as server:
        for _ in range(3):
            response = httpx.post(
                server.url + "/predict",
                json={
                    "sepal_length": 6.9,
                    "sepal_width": 3.1,
                    "petal_length": 5.8,
                    "petal_width": 2.3,
                },
            )
            assert response.status_code == 200, response.text
            assert response.json()["species"] == "Iris-virginica"
            assert response.json()["model"]["version"] == trained_home.result["version"]
            time.sleep(0.5)
        assert "Registry check failed; still serving v1" in server.log()
