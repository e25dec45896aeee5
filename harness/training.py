"""Train throwaway homes and drive the CLI, for server-level tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import homes
from harness.servers import PROJECT_DIR

BUILD_SECRET = "tok-5d1e9c0b7a2f4e66"
"""A token present in the environment of `bentoml build`; it must not end up in the Bento."""


def train_home(
    home: Path, *, tracking_uri: str | None = None, outdated: bool = False
) -> homes.TrainedHome:
    """A home of its own (registry + BentoML store under ``home``), trained once.

    ``outdated``: v1 is clearly worse than the shipped data allows, so that a retrain
    promotes (see :func:`harness.homes.train_home`).
    """
    return homes.train_home(home, home / "bentoml", tracking_uri=tracking_uri, outdated=outdated)


def iris_train(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the training CLI (``iris-train ARGS``) against the state ``env`` points at."""
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
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
