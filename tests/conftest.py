"""Shared fixtures: one trained registry per test session, real servers on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.utils.servers import BIN, PROJECT_DIR
from tests.utils.training import BUILD_SECRET, TrainedHome, train_home


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> TrainedHome:
    """The whole pipeline run once (real MLflow SQLite registry, real BentoML store).

    Read-only for tests: anything that retrains or promotes must train its own home.
    """
    return train_home(tmp_path_factory.mktemp("trained-home"))


@pytest.fixture(scope="session")
def built_bento(trained_home) -> str:
    """Built with a token in the environment, as a careless operator might."""
    proc = subprocess.run(
        [str(BIN / "bentoml"), "build", "--output", "tag"],
        cwd=PROJECT_DIR,
        env={**trained_home.env, "IRIS_ADMIN_TOKEN": BUILD_SECRET},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"iris_classifier:[a-z0-9]+", proc.stdout)
    assert match, proc.stdout
    return match.group(0)
