from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.homes import TrainedHome
from harness.servers import Server, bento_server


@pytest.fixture(scope="session")
def server(trained_home: TrainedHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `bentoml serve` worker over the session registry (no admin token: retrain off)."""
    env = {**trained_home.env, "IRIS_MAX_BATCH_SIZE": "4000", "IRIS_MAX_BODY_BYTES": "200000"}
    with bento_server(env, tmp_path_factory.mktemp("server-logs")) as srv:
        yield srv
