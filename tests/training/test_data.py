"""Validation of the raw CSV on tiny tables: every bad case names file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import RAW_CSV
from harness.data_files import (
    BAD_CASES,
    BadCase,
    read_table,
    tiny_table,
    to_text,
    with_cell,
    write_table,
)
from training.data import DataValidationError, load_raw
from training.schema import FEATURES, MAX_CM, MIN_ROWS_PER_CLASS, SPECIES, TARGET


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    return write_table(tmp_path / "tiny.csv", tiny_table())


def test_tiny_table_loads_with_snake_case_features(tiny_csv: Path) -> None:
    frame = load_raw(tiny_csv)

    assert list(frame.columns) == [*FEATURES, TARGET]
    assert len(frame) == len(SPECIES) * MIN_ROWS_PER_CLASS
    assert frame[TARGET].value_counts().to_dict() == dict.fromkeys(SPECIES, MIN_ROWS_PER_CLASS)
    assert all(frame[f].dtype == "float64" for f in FEATURES)
    assert frame.iloc[0][list(FEATURES)].tolist() == [5.1, 3.5, 1.4, 0.2]


def test_shipped_data_is_valid() -> None:
    frame = load_raw(RAW_CSV)

    assert len(frame) == 150
    assert frame[TARGET].value_counts().to_dict() == dict.fromkeys(SPECIES, 50)


@pytest.mark.parametrize(
    ("column", "value", "parsed"),
    [
        ("SepalLengthCm", f"{MAX_CM:g}", MAX_CM),  # the bound itself is allowed
        ("SepalLengthCm", " 5.0 ", 5.0),  # spaces around a number
        ("PetalWidthCm", "1e-1", 0.1),
        ("PetalWidthCm", "0.01", 0.01),
    ],
)
def test_edge_values_are_accepted(tmp_path: Path, column: str, value: str, parsed: float) -> None:
    path = write_table(tmp_path / "edge.csv", with_cell(tiny_table(), 2, column, value))

    frame = load_raw(path)

    feature = {"SepalLengthCm": "sepal_length", "PetalWidthCm": "petal_width"}[column]
    assert frame.iloc[0][feature] == parsed


def test_layout_variations_are_accepted(tmp_path: Path) -> None:
    """Columns in another order, a BOM, CRLF line ends, blank lines: same frame."""
    table = tiny_table()
    order = [5, 0, 3, 1, 4, 2]
    shuffled = [[row[i] for i in order] for row in table]
    text = to_text(shuffled).replace("\n", "\r\n") + "\r\n\r\n"
    path = tmp_path / "variant.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())

    variant = load_raw(path)

    reference = load_raw(write_table(tmp_path / "ref.csv", table))
    assert variant.equals(reference)


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_file_is_rejected_naming_file_line_and_column(tmp_path: Path, case: BadCase) -> None:
    path = case.write(tmp_path / f"{case.id}.csv", tiny_table())

    with pytest.raises(DataValidationError) as raised:
        load_raw(path)

    error, message = raised.value, str(raised.value)
    assert message.startswith(f"{path}")
    assert case.message in message
    assert (error.path, error.line, error.column) == (path, case.line, case.column)
    if case.line is not None:
        assert f", line {case.line}" in message
    if case.column:
        assert f"column {case.column!r}" in message
    assert "\n" not in message, "the CLI shows only the first line of the message"


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"

    with pytest.raises(DataValidationError, match=r"nowhere\.csv: file not found$"):
        load_raw(path)


def test_first_bad_row_is_reported(tmp_path: Path) -> None:
    """With several problems, the message points at the first one in file order."""
    table = with_cell(with_cell(tiny_table(), 9, "SepalWidthCm", "x"), 3, "SepalWidthCm", "y")
    path = write_table(tmp_path / "two.csv", table)

    with pytest.raises(DataValidationError) as raised:
        load_raw(path)

    assert (raised.value.line, raised.value.column) == (3, "SepalWidthCm")


def test_tiny_table_is_taken_from_the_shipped_file() -> None:
    shipped = read_table()
    tiny = tiny_table()

    assert tiny[0] == shipped[0]
    assert all(row in shipped for row in tiny[1:])
