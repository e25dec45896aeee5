"""Run the real pipeline into a throwaway home (its own SQLite registry and model store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.utils.servers import BIN, PROJECT_DIR

BUILD_SECRET = "tok-5d1e9c0b7a2f4e66"
"""A token present in the environment of `bentoml build`; it must not end up in the Bento."""


@dataclass(frozen=True)
class TrainedHome:
    """A folder holding a trained registry (mlflow.db, mlruns/) and a BentoML store."""

    home: Path
    env: dict[str, str]
    result: dict

    @property
    def bentoml_home(self) -> Path:
        return Path(self.env["BENTOML_HOME"])

    @property
    def tracking_uri(self) -> str:
        return self.env["IRIS_TRACKING_URI"]

    @property
    def test_csv(self) -> Path:
        return self.home / "data" / "processed" / "test.csv"


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment that points every store at ``home`` (nothing in the checkout)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("IRIS_", "BENTOML_", "MLFLOW_"))
    }
    env.update(
        IRIS_HOME=str(home),
        IRIS_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
        BENTOML_HOME=str(home / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def iris_train(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the ``iris-train`` console script."""
    proc = subprocess.run(
        [str(BIN / "iris-train"), *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"iris-train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc


def train_home(home: Path, **extra_env: str) -> TrainedHome:
    """Train, register and import once into ``home``; returns the parsed pipeline result."""
    env = home_env(home, **extra_env)
    proc = iris_train(env, "run")
    start = proc.stdout.index("{")
    return TrainedHome(home, env, json.loads(proc.stdout[start:]))


def python() -> str:
    return sys.executable
