"""The promotion gate, explicit promotion/rollback and bad data through the CLI.

One registry is built for the module by four real pipeline runs:

1. an outdated file (versicolor and virginica confused in the training rows): v1 becomes
   champion (no champion yet);
2. the shipped data: genuinely better on the same test rows, so v2 is promoted;
3. the shipped data again: an identical model (same data, same seed), so v3 is *not*
   promoted and becomes challenger; v2 stays champion;
4. a valid file whose training rows carry another species' measurements (the test rows
   are untouched): v4 is far worse on the same test set and becomes challenger.

The gate's rule and its evidence are checked here against a recomputation from the
registered models (tests/training/test_gate.py covers the rule on crafted predictions).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import error_lines, isolated_env, run_cli, run_pipeline
from harness.data_files import (
    bad_case,
    read_table,
    with_training_features_rotated,
    with_two_species_confused,
    write_table,
)
from harness.state import (
    StoreListing,
    alias_version,
    download_version,
    folder_entries,
    list_store,
    processed_files,
    registry_client,
)
from training import gate
from training.model_io import load_classifier
from training.schema import CHALLENGER, CHAMPION, FEATURES, TARGET
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
    """Version tags after the four runs."""
    aliases: dict[str, str]
    store: StoreListing
    """The BentoML store after the four runs."""


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    home = tmp_path_factory.mktemp("promotion")
    env = isolated_env(home, home / "bentoml")
    settings = Settings(home=home)
    split = {"seed": settings.seed, "test_size": settings.test_size}
    outdated = write_table(
        home / "inputs" / "outdated.csv", with_two_species_confused(read_table(), **split)
    )
    worse = write_table(
        home / "inputs" / "rotated-training-rows.csv",
        with_training_features_rotated(read_table(), **split),
    )
    results, processed = [], []
    for args in (("--raw", str(outdated)), (), (), ("--raw", str(worse))):
        results.append(run_pipeline(env, *args))
        processed.append(processed_files(settings.processed_dir))
    client = registry_client(settings.tracking_uri)
    name = settings.model_name
    tags = {str(v.version): v.tags for v in client.search_model_versions(f"name = '{name}'")}
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    store = list_store(home / "bentoml", settings.bento_model_name)
    return Story(home, env, settings, results, processed, tags, aliases, store)


def species_of(story: Story, version: str, test: pd.DataFrame, work: Path) -> np.ndarray:
    """What a registered version answers for each test row, loaded as serving loads it."""
    folder = download_version(
        story.settings.tracking_uri, story.settings.model_name, version, work / f"v{version}"
    )
    model = load_classifier(folder)
    return np.asarray(model.class_names)[model.predict_proba(test[list(FEATURES)]).argmax(1)]


def test_same_data_and_seed_give_the_same_split_and_metrics(story: Story) -> None:
    _, second, third, _ = story.results

    assert story.processed[2] == story.processed[1]
    assert third["candidates"] == second["candidates"]
    assert third["best_candidate"] == second["best_candidate"]


def test_first_run_becomes_champion(story: Story) -> None:
    assert story.results[0]["version"] == "1"
    assert story.results[0]["promoted"] is True
    assert story.tags["1"]["promotion.reason"] == "no champion yet"
    assert story.tags["1"]["promotion.decision"] == CHAMPION


def test_genuinely_better_candidate_is_promoted(story: Story) -> None:
    first, second = story.results[:2]
    # Same test rows (the outdated file changed training rows only), far better on them.
    assert story.processed[1]["test.csv"] == story.processed[0]["test.csv"]
    assert second["metrics"]["test_accuracy"] > first["metrics"]["test_accuracy"] + 0.3

    assert (second["version"], second["promoted"]) == ("2", True)
    tags = story.tags["2"]
    assert tags["promotion.decision"] == CHAMPION
    assert tags["promotion.previous_champion"] == "1"
    assert tags["promotion.reason"].startswith("promoted, better than champion v1: accuracy ")
    assert float(tags["promotion.diff_ci_low"]) > -float(tags["promotion.margin"])
    assert second["reason"] == tags["promotion.reason"]


def test_identical_retrain_is_not_promoted(story: Story) -> None:
    """Same data, same seed: the same answers on every row, so no evidence of improvement."""
    third = story.results[2]

    assert (third["version"], third["promoted"]) == ("3", False)
    tags = story.tags["3"]
    assert tags["promotion.decision"] == CHALLENGER
    assert tags["promotion.previous_champion"] == "2"
    assert (tags["promotion.diff"], tags["promotion.diff_ci_low"]) == ("0.000000", "0.000000")
    assert tags["promotion.reason"].startswith("not promoted, no improvement (same answers")
    assert "accuracy 0.9667 vs champion v2's 0.9667 on the same 30 test rows" in third["reason"]


def test_worse_candidate_becomes_challenger_and_champion_stays(story: Story) -> None:
    second, _, _, worse = story.results
    # The scenario only means something if the test rows are the same real flowers...
    assert story.processed[3]["test.csv"] == story.processed[1]["test.csv"]
    assert story.processed[3]["train.csv"] != story.processed[1]["train.csv"]
    # ...and the candidate really is worse on them.
    assert worse["metrics"]["test_accuracy"] < second["metrics"]["test_accuracy"] - 0.3

    assert (worse["version"], worse["promoted"]) == ("4", False)
    assert story.aliases == {CHAMPION: "2", CHALLENGER: "4"}
    tags = story.tags["4"]
    assert tags["promotion.decision"] == CHALLENGER
    assert tags["promotion.previous_champion"] == "2"
    assert tags["promotion.reason"].startswith("not promoted, worse than champion v2: accuracy")
    assert worse["reason"] == tags["promotion.reason"]


@pytest.mark.parametrize(("version", "champion"), [("2", "1"), ("3", "2"), ("4", "2")])
def test_evidence_on_the_version_matches_a_recomputation(
    story: Story, version: str, champion: str, tmp_path: Path
) -> None:
    """Both registered models on the run's test rows, the bootstrap redone: same numbers,
    on the version's tags and as metrics on the candidate's run."""
    test = pd.read_csv(story.home / "data" / "processed" / "test.csv")  # same rows, runs 2-4
    truth = test[TARGET].to_numpy()
    candidate = species_of(story, version, test, tmp_path) == truth
    previous = species_of(story, champion, test, tmp_path) == truth
    diff, low, high = gate.paired_bootstrap(candidate, previous, seed=story.settings.seed)
    tags = story.tags[version]

    assert tags["promotion.rows"] == str(len(test)) == "30"
    assert float(tags["promotion.candidate_accuracy"]) == pytest.approx(candidate.mean(), abs=1e-6)
    assert float(tags["promotion.champion_accuracy"]) == pytest.approx(previous.mean(), abs=1e-6)
    assert float(tags["promotion.diff"]) == pytest.approx(diff, abs=1e-6)
    assert float(tags["promotion.diff_ci_low"]) == pytest.approx(low, abs=1e-6)
    assert float(tags["promotion.diff_ci_high"]) == pytest.approx(high, abs=1e-6)
    assert float(tags["promotion.margin"]) == story.settings.promotion_margin == 0.02
    assert tags["promotion.method"] == gate.METHOD
    promoted = diff > 0 and low >= -story.settings.promotion_margin  # the documented rule
    assert (tags["promotion.decision"] == CHAMPION) is promoted

    client = registry_client(story.settings.tracking_uri)
    run = client.get_run(client.get_model_version(story.settings.model_name, version).run_id)
    logged = run.data.metrics
    assert logged["promotion_diff"] == pytest.approx(diff)
    assert logged["promotion_diff_ci_low"] == pytest.approx(low)
    assert logged["promotion_promoted"] == float(promoted)
    # mlflow.models.evaluate's own metrics for both models, on the candidate's run.
    assert logged["promotion_candidate_accuracy_score"] == pytest.approx(candidate.mean())
    assert logged["promotion_champion_accuracy_score"] == pytest.approx(previous.mean())
    assert logged["promotion_candidate_example_count"] == 30


def test_a_failed_gate_moves_no_alias_and_writes_no_decision(story: Story, tmp_path) -> None:
    """The champion cannot be loaded (tampered) after the candidate was: the gate fails,
    and neither alias nor any tag of the candidate changes. On a copy of the registry."""
    import mlflow

    from tests.utils.tamper import register_tampered
    from training import registry
    from training.model_io import ModelLoadError

    db = tmp_path / "mlflow.db"
    shutil.copy(story.home / "mlflow.db", db)
    uri = f"sqlite:///{db}"
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        tampered = str(register_tampered(uri, "2", tmp_path, story.settings.model_name))
        client = registry_client(uri)
        name = story.settings.model_name
        client.set_registered_model_alias(name, CHAMPION, tampered)
        before = client.get_model_version(name, "3").tags
        settings = Settings(home=story.home, tracking_uri=uri)
        registry.configure(settings)
        test = pd.read_csv(story.home / "data" / "processed" / "test.csv")

        with pytest.raises(ModelLoadError, match="untrusted"):
            registry.gate("3", story.results[2]["best_run_id"], test, settings)

        assert client.get_registered_model(name).aliases == {
            CHAMPION: int(tampered),
            CHALLENGER: 4,
        }
        assert client.get_model_version(name, "3").tags == before
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
    assert not (tmp_path / "pwned").exists()


def test_decisions_are_in_the_log(story: Story) -> None:
    log = (story.home / "logs" / "training.log").read_text()

    assert "Version 1 -> champion: no champion yet" in log
    assert "Version 2 -> champion: promoted, better than champion v1: accuracy" in log
    assert "Version 3 -> challenger: not promoted, no improvement" in log
    assert "Version 4 -> challenger: not promoted, worse than champion v2" in log
    assert log.count("training.registry: Gate took") == 3


def test_store_follows_the_champion_only(story: Story) -> None:
    versions = sorted(m.labels["registry_version"] for m in story.store.models)

    assert versions == ["1", "2"]  # challengers are never imported
    assert story.store.latest == story.results[1]["bento_tag"] == story.results[3]["bento_tag"]
    assert story.results[2]["bento_tag"] == story.results[1]["bento_tag"]


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
    """promote 4 (the challenger) and import it; roll back to 2 and import again: 2 is the
    store's latest once more, re-created in place, so every version that was ever champion
    is in the store exactly once (v3 never was)."""
    client = registry_client(story.settings.tracking_uri)
    name = story.settings.model_name

    promoted = run_cli("promote", "4", env=story.env)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"{name}@champion -> v4"
    assert alias_version(client, name, CHAMPION) == "4"
    assert alias_version(client, name, CHALLENGER) is None  # the challenger got promoted
    tags = client.get_model_version(name, "4").tags
    assert tags["promotion.decision"] == CHAMPION
    assert tags["promotion.reason"] == "manual promotion (previous champion: v2)"
    assert run_cli("import", env=story.env).stdout.strip().endswith("(imported)")

    rolled_back = run_cli("promote", "2", env=story.env)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert alias_version(client, name, CHAMPION) == "2"
    assert client.get_model_version(name, "2").tags["promotion.previous_champion"] == "4"
    imported = run_cli("import", env=story.env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == f"{story.results[1]['bento_tag']} (imported)"

    store = list_store(story.home / "bentoml", story.settings.bento_model_name)
    assert [len(store.by_version(v)) for v in ("1", "2", "3", "4")] == [1, 1, 0, 1]
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


def test_an_alias_move_that_fails_leaves_the_store_on_the_champion(tmp_path) -> None:
    """The promoted v2 enters the BentoML store just before the alias moves; when that move
    fails, the store's latest (what restarted workers and `bentoml build` load) goes back
    to the champion, v1."""
    import subprocess
    import sys

    home = tmp_path / "home"
    env = isolated_env(home, home / "bentoml")
    settings = Settings(home=home)
    split = {"seed": settings.seed, "test_size": settings.test_size}
    outdated = write_table(
        home / "inputs" / "outdated.csv", with_two_species_confused(read_table(), **split)
    )
    first = run_pipeline(env, "--raw", str(outdated))
    script = (
        "from training import pipeline, registry\n"
        "from training.settings import get_settings\n"
        "real = registry._apply\n"
        "def flaky(decision, *args, **kwargs):\n"
        "    if decision.promoted:\n"
        "        raise RuntimeError('registry went away before the alias moved')\n"
        "    return real(decision, *args, **kwargs)\n"
        "registry._apply = flaky\n"
        "pipeline.run(get_settings())\n"
    )
    failed = subprocess.run(
        [sys.executable, "-c", script], cwd=home, env=env, capture_output=True, text=True
    )

    assert failed.returncode != 0 and "registry went away" in failed.stderr
    client = registry_client(settings.tracking_uri)
    assert client.get_registered_model(settings.model_name).aliases == {CHAMPION: 1}
    store = list_store(home / "bentoml", settings.bento_model_name)
    assert store.by_version("2"), "v2 entered the store before the alias move (the hook ran)"
    assert store.latest == first["bento_tag"]  # ...and the champion is latest again
