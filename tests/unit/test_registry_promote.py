"""Explicit promotion and the canary's promotion on a real (SQLite) MLflow registry: safe to
run again after a failure half-way, never promoting what no live traffic tried, and never
calling an outage "no such version"."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.canary import promote_challenger, set_canary
from training.registry import RegistryError, configure, promote
from training.schema import CANARY_TAG, CHALLENGER, CHAMPION
from training.settings import Settings


@pytest.fixture
def registry(tmp_path):
    """Versions 1-3 of the model (no artifacts: promotion reads none)."""
    settings = Settings(home=tmp_path)
    configure(settings)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    client.create_registered_model(settings.model_name)
    for _ in range(3):
        client.create_model_version(settings.model_name, source=str(tmp_path))
    return settings, client


def aliases(client: MlflowClient, settings: Settings) -> dict[str, str]:
    model = client.get_registered_model(settings.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_promoting_the_champion_again_keeps_the_way_back(registry):
    settings, client = registry
    promote("1", settings)
    promote("2", settings)
    tags = client.get_model_version(settings.model_name, "2").tags
    assert tags["promotion.previous_champion"] == "1"
    client.set_registered_model_alias(settings.model_name, CHALLENGER, "2")  # a half-done run
    again = promote("2", settings)
    assert again.reason == "already champion: its tags are unchanged"
    assert client.get_model_version(settings.model_name, "2").tags == tags  # still v1
    assert aliases(client, settings) == {CHAMPION: "2"}  # and the challenger alias is gone


def test_the_first_promotion_says_there_was_no_champion(registry):
    settings, _ = registry
    assert promote("3", settings).reason == "manual promotion (no previous champion)"


def test_promote_challenger_refuses_a_version_the_canary_never_tried(registry):
    settings, client = registry
    promote("1", settings)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, "2")
    assert set_canary(10, settings) == "2"
    client.set_registered_model_alias(settings.model_name, CHALLENGER, "3")  # a retrain moved it
    with pytest.raises(RegistryError, match=r"the canary runs on v2 but @challenger is now v3"):
        promote_challenger(settings)
    assert aliases(client, settings) == {CHAMPION: "1", CHALLENGER: "3"}  # nothing changed
    promote("2", settings)  # as the refusal suggests: the canary on v2 is over
    assert CANARY_TAG not in client.get_registered_model(settings.model_name).tags
    set_canary(10, settings)  # a canary on v3, then its promotion
    assert promote_challenger(settings).version == "3"  # not refused: no stale canary tag
    assert aliases(client, settings) == {CHAMPION: "3"}
    assert CANARY_TAG not in client.get_registered_model(settings.model_name).tags


def test_a_registry_outage_is_not_reported_as_a_missing_version(registry, monkeypatch):
    settings, _ = registry

    def outage(self, name, version):
        raise MlflowException("connection refused", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(MlflowClient, "get_model_version", outage)
    with pytest.raises(MlflowException, match="connection refused"):
        promote("1", settings)
