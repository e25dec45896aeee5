"""Shared fixtures: one trained registry per test session, real servers on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.utils.training import TrainedHome, train_home


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> TrainedHome:
    """The whole pipeline run once (real MLflow SQLite registry, real BentoML store).

    Read-only for tests: anything that retrains or promotes must train its own home.
    """
    return train_home(tmp_path_factory.mktemp("trained-home"))
