"""Two first writes of one alias at once, on a real PostgreSQL registry (the database a
fleet's ``mlflow server`` uses): MLflow's own write fails the second with a unique-key
violation (seen in CI as one of two replicas' concurrent retrains failing);
``training.aliases.set_alias`` writes again, except over a first champion, whose rival
then waits as challenger.

The race is made exact: this test inserts the alias row in a transaction it holds open,
so MLflow's read finds no row, its insert waits on the held key, and fails once the test
commits. Here MLflow's store runs in-process; through an ``mlflow server`` the same error
comes back in a REST answer, which ``tests/reliability/test_fleet.py`` drives (two replicas
retraining at once)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import mlflow
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.utils.postgres import postgres_server
from training.aliases import alias_version, set_alias
from training.registry import Decision, _apply, configure
from training.schema import CHALLENGER, CHAMPION
from training.settings import Settings


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def registry(postgres_url, tmp_path) -> Iterator[tuple[Settings, sa.Engine]]:
    """A model with versions 1 and 2 and no alias, in MLflow's own PostgreSQL schema."""
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    settings = Settings(home=tmp_path, tracking_uri=postgres_url)
    configure(settings)
    client = MlflowClient()
    name = f"iris-{tmp_path.name}"[:60]  # one module-wide database: a model per test
    settings = Settings(home=tmp_path, tracking_uri=postgres_url, model_name=name)
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source=str(tmp_path))
    engine = sa.create_engine(postgres_url)
    yield settings, engine
    engine.dispose()
    mlflow.set_tracking_uri(saved[0])
    mlflow.set_registry_uri(saved[1])


def race(settings: Settings, engine: sa.Engine, write: Callable[[], object]) -> object:
    """Run ``write`` (champion -> v1) while another writer's first insert of @champion -> v2
    is in flight; return what ``write`` returned, or the exception it raised."""
    raised: list[object] = []

    def writer() -> None:
        try:
            raised.append(write())
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            raised.append(e)

    with engine.connect() as other:
        other.execute(
            sa.text(
                "INSERT INTO registered_model_aliases (name, alias, version)"
                " VALUES (:name, :alias, 2)"
            ),
            {"name": settings.model_name, "alias": CHAMPION},
        )
        thread = threading.Thread(target=writer)
        thread.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        deadline = time.monotonic() + 30
        with engine.connect() as watch:
            while watch.execute(sa.text(waiting)).scalar() == 0:
                assert thread.is_alive(), f"the write did not wait on the held key: {raised}"
                assert time.monotonic() < deadline, "the write never reached its insert"
                time.sleep(0.05)
        other.commit()
    thread.join(timeout=60)
    assert not thread.is_alive()
    return raised[0]


def test_mlflows_own_alias_write_loses_the_race(registry):
    """The defect set_alias exists for; if a future MLflow fixes it, this says so."""
    settings, engine = registry
    client = MlflowClient()
    raised = race(
        settings,
        engine,
        lambda: client.set_registered_model_alias(settings.model_name, CHAMPION, "1"),
    )
    assert isinstance(raised, MlflowException), raised
    assert "registered_model_alias_pk" in raised.message
    assert alias_version(settings, CHAMPION) == "2"  # the other writer's


def test_set_alias_writes_again_and_its_version_wins(registry, caplog):
    settings, engine = registry
    assert race(settings, engine, lambda: set_alias(settings, CHAMPION, "1")) == "1"
    assert alias_version(settings, CHAMPION) == "1"  # the later write, as if in turn
    assert "raced with another writer" in caplog.text


def test_set_alias_can_leave_the_rivals_version(registry, caplog):
    settings, engine = registry
    write = lambda: set_alias(settings, CHAMPION, "1", rival_wins=True)  # noqa: E731
    assert race(settings, engine, write) == "2"
    assert alias_version(settings, CHAMPION) == "2"
    assert "@champion was set to v2 at the same moment" in caplog.text


def test_a_first_champion_that_loses_the_race_waits_as_challenger(registry):
    """Both retrains found no champion and skipped the comparison: the one whose alias
    write came second does not replace a champion it was never compared with."""
    settings, engine = registry
    first = Decision("1", True, "no champion yet")
    applied = race(
        settings, engine, lambda: _apply(first, settings, previous=None, rival_wins=True)
    )
    assert isinstance(applied, Decision) and not applied.promoted
    assert applied.reason == "not promoted, v2 became champion at the same moment (no champion yet)"
    assert alias_version(settings, CHAMPION) == "2"
    assert alias_version(settings, CHALLENGER) == "1"
    tags = MlflowClient().get_model_version(settings.model_name, "1").tags
    assert (tags["promotion.decision"], tags["promotion.reason"]) == (CHALLENGER, applied.reason)


def test_set_alias_raises_what_is_not_the_race(registry, caplog):
    settings, _ = registry
    with pytest.raises(MlflowException, match=r"[Vv]ersion.*9"):
        set_alias(settings, CHAMPION, "9")
    assert alias_version(settings, CHAMPION) is None
    assert "raced" not in caplog.text  # refused at once, not written three times
