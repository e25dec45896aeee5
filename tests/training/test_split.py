"""The stratified, seeded split and its atomic publication."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import RAW_CSV
from harness.data_files import bad_case, tiny_table, write_table
from harness.state import folder_entries, processed_files
from training import data
from training.pipeline import preprocess
from training.schema import FEATURES, MIN_ROWS_PER_CLASS, SPECIES, TARGET
from training.settings import Settings


@pytest.fixture(scope="module")
def shipped() -> pd.DataFrame:
    return data.load_raw(RAW_CSV)


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return sorted(frame[[*FEATURES, TARGET]].itertuples(index=False, name=None))


def test_split_is_80_20_and_stratified(shipped: pd.DataFrame) -> None:
    split = data.split(shipped, source=RAW_CSV, seed=1, test_size=0.2)

    assert (len(split.train), len(split.test)) == (120, 30)
    assert split.train[TARGET].value_counts().to_dict() == dict.fromkeys(SPECIES, 40)
    assert split.test[TARGET].value_counts().to_dict() == dict.fromkeys(SPECIES, 10)


def test_split_partitions_the_rows(shipped: pd.DataFrame) -> None:
    split = data.split(shipped, source=RAW_CSV, seed=1, test_size=0.2)

    assert _rows(pd.concat([split.train, split.test])) == _rows(shipped)


def test_split_is_deterministic_for_a_seed(shipped: pd.DataFrame) -> None:
    first = data.split(shipped, source=RAW_CSV, seed=7, test_size=0.2)
    again = data.split(shipped, source=RAW_CSV, seed=7, test_size=0.2)
    other = data.split(shipped, source=RAW_CSV, seed=8, test_size=0.2)

    pd.testing.assert_frame_equal(first.train, again.train)
    pd.testing.assert_frame_equal(first.test, again.test)
    assert _rows(other.test) != _rows(first.test)


def test_smallest_valid_table_puts_every_species_in_both_sides(tmp_path: Path) -> None:
    """MIN_ROWS_PER_CLASS is enough for a stratified 20 % split (its documented purpose)."""
    path = write_table(tmp_path / "tiny.csv", tiny_table(MIN_ROWS_PER_CLASS))

    split = data.split(data.load_raw(path), source=path, seed=1, test_size=0.2)

    assert set(split.test[TARGET]) == set(SPECIES)
    assert set(split.train[TARGET]) == set(SPECIES)


def test_split_records_the_source_digest(shipped: pd.DataFrame) -> None:
    split = data.split(shipped, source=RAW_CSV, seed=1, test_size=0.2)

    assert split.digest == data.file_digest(RAW_CSV)
    assert len(split.digest) == 16


@pytest.fixture
def published(tmp_path: Path) -> Settings:
    """Settings whose processed pair has been published once from the tiny table."""
    raw = write_table(tmp_path / "inputs" / "tiny.csv", tiny_table(10))
    settings = Settings(home=tmp_path / "home", raw_data=raw)
    preprocess(settings)
    return settings


def test_publish_writes_pair_and_manifest(published: Settings) -> None:
    train, test = data.read_split(published.processed_dir)
    manifest = json.loads((published.processed_dir / "manifest.json").read_text())

    assert list(train.columns) == list(test.columns) == [*FEATURES, TARGET]
    assert (len(train), len(test)) == (24, 6)
    assert manifest["rows"] == {"train": 24, "test": 6}
    assert manifest["seed"] == published.seed
    assert manifest["source_sha256_16"] == data.file_digest(published.raw_data)


@pytest.mark.parametrize("case_id", ["non-numeric", "absurd", "empty-file", "ragged-long-row"])
def test_failed_preprocess_leaves_published_pair_untouched(
    published: Settings, tmp_path: Path, case_id: str
) -> None:
    before = processed_files(published.processed_dir)
    entries = folder_entries(published.processed_dir.parent)
    bad = bad_case(case_id).write(tmp_path / "inputs" / "bad.csv", tiny_table(10))

    with pytest.raises(data.DataValidationError):
        preprocess(published, bad)

    assert processed_files(published.processed_dir) == before
    assert folder_entries(published.processed_dir.parent) == entries


def test_failure_while_writing_keeps_old_pair_and_leaves_no_debris(published: Settings) -> None:
    """A write that dies half way (here: the test frame lacks a column, so train.csv is
    already written when test.csv fails) must not publish anything or leave files behind."""
    before = processed_files(published.processed_dir)
    entries = folder_entries(published.processed_dir.parent)
    good = data.split(
        data.load_raw(published.raw_data), source=published.raw_data, seed=2, test_size=0.2
    )
    broken = data.Split(good.train, good.test.drop(columns=[TARGET]), good.source, good.digest)

    with pytest.raises(KeyError):
        data.write_split(broken, published.processed_dir, seed=2)

    assert processed_files(published.processed_dir) == before
    assert folder_entries(published.processed_dir.parent) == entries


def test_republish_swaps_the_pair_and_removes_the_old_one(published: Settings) -> None:
    before = processed_files(published.processed_dir)
    old_target = published.processed_dir.resolve()
    reseeded = published.model_copy(update={"seed": 2})

    preprocess(reseeded)

    after = processed_files(published.processed_dir)
    assert after["test.csv"] != before["test.csv"]
    assert json.loads(after["manifest.json"])["seed"] == 2
    assert not old_target.exists()
    entries = folder_entries(published.processed_dir.parent)
    assert len(entries) == 2, entries  # the link and the one folder it points at
    assert os.readlink(published.processed_dir) in entries


def test_load_processed_without_a_pair_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(data.DataValidationError, match="run preprocess first"):
        data.load_processed(tmp_path / "processed")
