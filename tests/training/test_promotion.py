"""The promotion gate, explicit promotion/rollback and bad data through the CLI.

One registry is built for the module by three real pipeline runs:

1. the shipped data: v1 becomes champion (no champion yet);
2. the same data again: identical metrics, so v2 is "at least as good" and takes over;
3. a valid file whose training rows carry another species' measurements (the test rows
   are untouched): v3 is far worse on the same test set and becomes challenger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cli import error_lines, isolated_env, run_cli, run_pipeline
from harness.state import (
    StoreListing,
    alias_version,
    folder_entries,
    list_store,
    processed_files,
    registry_client,
)
from tests.utils.data_files import (
    bad_case,
    read_table,
    with_training_features_rotated,
    write_table,
)
from training.registry import CHALLENGER, CHAMPION
from training.settings import Settings


@dataclass(frozen=True)
class Story:
    home: Path
    env: dict[str, str]
    settings: Settings
    results: list[dict]
    processed: list[dict[str, bytes]]
    """The published train/test pair after each run."""
    tags: dict[str, dict[str, str]]
    """Version tags after the three runs."""
    aliases: dict[str, str]
    store: StoreListing
    """The BentoML store after the three runs."""


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    home = tmp_path_factory.mktemp("promotion")
    env = isolated_env(home, home / "bentoml")
    settings = Settings(home=home)
    worse = write_table(
        home / "inputs" / "rotated-training-rows.csv",
        with_training_features_rotated(
            read_table(), seed=settings.seed, test_size=settings.test_size
        ),
    )
    results, processed = [], []
    for args in ((), (), ("--raw", str(worse))):
        results.append(run_pipeline(env, *args))
        processed.append(processed_files(settings.processed_dir))
    client = registry_client(settings.tracking_uri)
    name = settings.model_name
    tags = {str(v.version): v.tags for v in client.search_model_versions(f"name = '{name}'")}
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    store = list_store(home / "bentoml", settings.bento_model_name)
    return Story(home, env, settings, results, processed, tags, aliases, store)


def test_same_data_and_seed_give_the_same_split_and_metrics(story: Story) -> None:
    first, second, _ = story.results

    assert story.processed[1] == story.processed[0]
    assert second["candidates"] == first["candidates"]
    assert second["best_candidate"] == first["best_candidate"]


def test_first_run_becomes_champion(story: Story) -> None:
    assert story.results[0]["version"] == "1"
    assert story.results[0]["promoted"] is True
    assert story.tags["1"]["promotion.reason"] == "no champion yet"


def test_equally_good_candidate_takes_over(story: Story) -> None:
    second = story.results[1]

    assert (second["version"], second["promoted"]) == ("2", True)
    assert story.tags["2"]["promotion.decision"] == CHAMPION
    assert story.tags["2"]["promotion.previous_champion"] == "1"
    assert "is at least as good as champion v1" in story.tags["2"]["promotion.reason"]


def test_worse_candidate_becomes_challenger_and_champion_stays(story: Story) -> None:
    first, _, worse = story.results
    # The scenario only means something if the test rows are the same real flowers...
    assert story.processed[2]["test.csv"] == story.processed[0]["test.csv"]
    assert story.processed[2]["train.csv"] != story.processed[0]["train.csv"]
    # ...and the candidate really is worse on them.
    assert worse["metrics"]["test_accuracy"] < first["metrics"]["test_accuracy"] - 0.3

    assert (worse["version"], worse["promoted"]) == ("3", False)
    assert story.aliases == {CHAMPION: "2", CHALLENGER: "3"}
    tags = story.tags["3"]
    assert tags["promotion.decision"] == CHALLENGER
    assert tags["promotion.previous_champion"] == "2"
    assert "is worse than champion v2" in tags["promotion.reason"]
    assert "on the same test set" in tags["promotion.reason"]
    assert worse["reason"] == tags["promotion.reason"]


def test_decisions_are_in_the_log(story: Story) -> None:
    log = (story.home / "logs" / "training.log").read_text()

    assert "Version 1 -> champion: no champion yet" in log
    assert "Version 2 -> champion: test_accuracy=" in log
    assert "Version 3 -> challenger: test_accuracy=" in log


def test_store_follows_the_champion_only(story: Story) -> None:
    versions = sorted(m.labels["registry_version"] for m in story.store.models)

    assert versions == ["1", "2"]  # the challenger is never imported
    assert story.store.latest == story.results[1]["bento_tag"] == story.results[2]["bento_tag"]


@pytest.mark.parametrize(
    ("case_id", "where"),
    [
        ("non-numeric", ", line 4, column 'SepalWidthCm': 'abc' is not a number"),
        ("too-few-rows-per-class", ", column 'Species': too few rows per class"),
    ],
    ids=["non-numeric", "too-few-rows-per-class"],
)
def test_bad_data_through_cli_changes_nothing(story: Story, case_id: str, where: str) -> None:
    bad = bad_case(case_id).write(story.home / "inputs" / f"{case_id}.csv", read_table())
    client = registry_client(story.settings.tracking_uri)
    name = story.settings.model_name

    def state() -> tuple:
        return (
            processed_files(story.settings.processed_dir),
            folder_entries(story.settings.processed_dir.parent),
            alias_version(client, name, CHAMPION),
            len(client.search_model_versions(f"name = '{name}'")),
            folder_entries(story.home / "bentoml" / "models" / story.settings.bento_model_name),
        )

    before = state()
    proc = run_cli("run", "--raw", str(bad), env=story.env)

    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert line.startswith(f"error: pipeline failed: {bad}{where}")
    assert "Traceback" not in proc.stderr
    assert state() == before


def test_promote_and_roll_back_explicitly(story: Story) -> None:
    """promote 3 and import it; roll back to 2 and import again: 2 is the store's latest
    once more, re-created in place, so every version is in the store exactly once."""
    client = registry_client(story.settings.tracking_uri)
    name = story.settings.model_name

    promoted = run_cli("promote", "3", env=story.env)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"{name}@champion -> v3"
    assert alias_version(client, name, CHAMPION) == "3"
    assert alias_version(client, name, CHALLENGER) is None  # the challenger got promoted
    tags = client.get_model_version(name, "3").tags
    assert tags["promotion.decision"] == CHAMPION
    assert tags["promotion.reason"] == "manual promotion (previous champion: v2)"
    assert run_cli("import", env=story.env).stdout.strip().endswith("(imported)")

    rolled_back = run_cli("promote", "2", env=story.env)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert alias_version(client, name, CHAMPION) == "2"
    assert client.get_model_version(name, "2").tags["promotion.previous_champion"] == "3"
    imported = run_cli("import", env=story.env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == f"{story.results[1]['bento_tag']} (imported)"

    store = list_store(story.home / "bentoml", story.settings.bento_model_name)
    assert [len(store.by_version(v)) for v in ("1", "2", "3")] == [1, 1, 1]
    assert store.latest == story.results[1]["bento_tag"]


def test_promoting_an_unknown_version_fails_in_one_line(story: Story) -> None:
    client = registry_client(story.settings.tracking_uri)
    name = story.settings.model_name
    champion = alias_version(client, name, CHAMPION)

    proc = run_cli("promote", "99", env=story.env)

    assert proc.returncode == 1
    assert error_lines(proc) == [f"error: promote failed: {name} has no version '99'"]
    assert "Traceback" not in proc.stderr
    assert alias_version(client, name, CHAMPION) == champion
