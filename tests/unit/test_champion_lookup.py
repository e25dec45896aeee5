"""serving.champion_lookup against a real registry of the pinned MLflow: every branch of its
SQLite read, and the same "no champion" decisions as training.aliases (MLflow's client)."""

from __future__ import annotations

import sqlite3

import pytest

from serving import champion_lookup
from serving.champion_lookup import Champion, RegistryUnreachableError
from training import aliases
from training.schema import CANARY_TAG, CHALLENGER, CHAMPION
from training.settings import Settings

NAME = "iris-classifier"


@pytest.fixture
def sqlite_registry(tmp_path):
    """An empty MLflow registry in a fresh SQLite file, and a Settings pointing at it."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    # Set in-process too: another test in this worker may have set MLflow's URIs, and
    # those win over the environment.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri, Settings(home=tmp_path, tracking_uri=uri)
    mlflow.set_tracking_uri(saved[0])
    mlflow.set_registry_uri(saved[1])


def both(uri: str, settings: Settings, alias: str) -> tuple[str | None, str | None]:
    """(champion_lookup's answer, MLflow client's answer) for ``alias``."""
    found = champion_lookup.champion(uri, NAME, alias)
    return (found.version if found else None), aliases.alias_version(settings, alias)


def test_every_registry_state_gets_the_same_answer_as_mlflows_client(sqlite_registry):
    from mlflow import MlflowClient

    uri, settings = sqlite_registry
    # No file at all: nothing trained here (and the poll must not create one).
    assert champion_lookup.champion(uri, NAME) is None
    assert not settings.home.joinpath("mlflow.db").exists()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models()  # MLflow creates its tables
    assert both(uri, settings, CHAMPION) == (None, None)  # no such model
    client.create_registered_model(NAME)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    for _ in range(2):
        client.create_model_version(NAME, source="file:///nowhere", run_id=run_id)
    assert both(uri, settings, CHAMPION) == (None, None)  # the model has no alias yet
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    client.set_registered_model_alias(NAME, CHALLENGER, "1")
    assert both(uri, settings, CHAMPION) == ("2", "2")
    assert both(uri, settings, CHALLENGER) == ("1", "1")
    assert champion_lookup.champion(uri, NAME) == Champion("2", run_id)
    # The MlflowClient branch (any other database URL) agrees with the SQLite read.
    assert champion_lookup._with_mlflow(uri, NAME, CHAMPION) == Champion("2", run_id)
    assert champion_lookup._with_mlflow(uri, NAME, "nope") is None
    client.delete_registered_model_alias(NAME, CHALLENGER)
    assert both(uri, settings, CHALLENGER) == (None, None)
    # The canary split is a tag on the registered model.
    assert champion_lookup.model_tag(uri, NAME, CANARY_TAG) is None
    client.set_registered_model_tag(NAME, CANARY_TAG, "10@v1")
    assert champion_lookup.model_tag(uri, NAME, CANARY_TAG) == "10@v1"
    assert champion_lookup.model_tag(uri, "other-model", CANARY_TAG) is None


def test_aliases_are_read_in_this_servers_workspace_only(sqlite_registry, monkeypatch):
    from mlflow import MlflowClient

    uri, settings = sqlite_registry
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    client.create_model_version(NAME, source="file:///nowhere")
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    client.set_registered_model_tag(NAME, CANARY_TAG, "5@v1")
    columns = {
        row[1]
        for row in sqlite3.connect(settings.home / "mlflow.db").execute(
            "PRAGMA table_info(registered_model_aliases)"
        )
    }
    assert "workspace" in columns, "the pinned MLflow scopes aliases by workspace"
    assert champion_lookup.champion(uri, NAME) == Champion("1", "")
    monkeypatch.setenv("MLFLOW_WORKSPACE", "another-team")
    assert champion_lookup.champion(uri, NAME) is None
    assert champion_lookup.model_tag(uri, NAME, CANARY_TAG) is None


def test_a_registry_without_workspaces_is_read_too(tmp_path):
    """MLflow 2.x's layout (no workspace column), in case a registry predates 3.x."""
    path = tmp_path / "mlflow.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE registered_model_aliases (alias TEXT, version INTEGER, name TEXT);
        CREATE TABLE model_versions (name TEXT, version INTEGER, run_id TEXT);
        CREATE TABLE registered_model_tags (key TEXT, value TEXT, name TEXT);
        INSERT INTO registered_model_aliases VALUES ('champion', 3, 'iris-classifier');
        INSERT INTO model_versions VALUES ('iris-classifier', 3, 'abc');
        INSERT INTO registered_model_tags VALUES ('canary', '20@v3', 'iris-classifier');
        """
    )
    db.commit()
    db.close()
    uri = f"sqlite:///{path}"
    assert champion_lookup.champion(uri, NAME) == Champion("3", "abc")
    assert champion_lookup.champion(uri, NAME, CHALLENGER) is None
    assert champion_lookup.model_tag(uri, NAME, "canary") == "20@v3"


def test_an_empty_or_damaged_file_is_no_champion_or_an_error(tmp_path):
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert champion_lookup.champion(f"sqlite:///{empty}", NAME) is None
    assert champion_lookup.model_tag(f"sqlite:///{empty}", NAME, "canary") is None
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 100)
    with pytest.raises(RegistryUnreachableError, match="could not read the registry"):
        champion_lookup.champion(f"sqlite:///{damaged}", NAME)
    with pytest.raises(RegistryUnreachableError, match="could not read the registry"):
        champion_lookup.model_tag(f"sqlite:///{damaged}", NAME, "canary")
