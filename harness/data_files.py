"""Small Iris CSVs for tests: a tiny valid table, bad variants of it, a harmful valid one.

A table is the CSV as a list of rows of strings, header first, so that ``table[n - 1]`` is
line ``n`` of the file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from harness.cli import RAW_CSV
from training.schema import MIN_ROWS_PER_CLASS, RAW_COLUMNS, RAW_TARGET, RAW_TO_FEATURE, SPECIES

Table = list[list[str]]


def read_table(path: Path = RAW_CSV) -> Table:
    with path.open(newline="") as f:
        return [row for row in csv.reader(f) if row]


def to_text(table: Table) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table)
    return out.getvalue()


def write_table(path: Path, table: Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_text(table))
    return path


def tiny_table(per_class: int = MIN_ROWS_PER_CLASS) -> Table:
    """The first ``per_class`` rows of each species from the shipped data, in file order."""
    header, *rows = read_table()
    species = header.index(RAW_TARGET)
    kept = [r for s in SPECIES for r in [r for r in rows if r[species] == s][:per_class]]
    return [header, *kept]


def with_cell(table: Table, line: int, column: str, value: str) -> Table:
    """A copy of ``table`` with the cell at file line ``line`` (header is 1) replaced."""
    copy = [list(row) for row in table]
    copy[line - 1][table[0].index(column)] = value
    return copy


def without_column(table: Table, column: str) -> Table:
    index = table[0].index(column)
    return [row[:index] + row[index + 1 :] for row in table]


def with_column(table: Table, name: str, value: str) -> Table:
    return [[*table[0], name]] + [[*row, value] for row in table[1:]]


def with_line(table: Table, line: int, row: list[str]) -> Table:
    copy = [list(r) for r in table]
    copy[line - 1] = row
    return copy


def keep_rows_of(table: Table, species: str, count: int) -> Table:
    """Drop rows of ``species`` beyond the first ``count``."""
    column = table[0].index(RAW_TARGET)
    seen, kept = 0, [table[0]]
    for row in table[1:]:
        if row[column] == species:
            seen += 1
            if seen > count:
                continue
        kept.append(row)
    return kept


@dataclass(frozen=True)
class BadCase:
    """A broken variant of a valid table and the error it must produce.

    Attributes:
        id: Test id.
        build: Turns a valid table into the file's bytes.
        message: Fragment the error message must contain.
        line: File line the error must name (None for whole-file problems).
        column: Column the error must name ("" when it cannot name one).
    """

    id: str
    build: Callable[[Table], bytes]
    message: str
    line: int | None = None
    column: str = ""

    def write(self, path: Path, table: Table) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.build(table))
        return path


def _text(change: Callable[[Table], Table]) -> Callable[[Table], bytes]:
    return lambda table: to_text(change(table)).encode()


def _cell(line: int, column: str, value: str) -> Callable[[Table], bytes]:
    return _text(lambda t: with_cell(t, line, column, value))


_EXPECTED = ", ".join(RAW_COLUMNS)

# Line 4 is the third data row (a setosa in both the tiny and the shipped table).
BAD_CASES: tuple[BadCase, ...] = (
    BadCase(
        "missing-column",
        _text(lambda t: without_column(t, "PetalWidthCm")),
        f"missing column(s): PetalWidthCm; expected {_EXPECTED}",
        line=1,
    ),
    BadCase(
        "extra-column",
        _text(lambda t: with_column(t, "Colour", "blue")),
        f"unexpected column(s): Colour; expected {_EXPECTED}",
        line=1,
    ),
    BadCase(
        "duplicated-column",
        _text(lambda t: with_column(t, "SepalWidthCm", "3.0")),
        "duplicated column(s): SepalWidthCm",
        line=1,
    ),
    BadCase(
        "non-numeric",
        _cell(4, "SepalWidthCm", "abc"),
        "'abc' is not a number",
        line=4,
        column="SepalWidthCm",
    ),
    BadCase(
        "decimal-comma",
        _cell(4, "SepalLengthCm", "4,7"),
        "'4,7' is not a number",
        line=4,
        column="SepalLengthCm",
    ),
    BadCase(
        "nan-literal",
        _cell(5, "PetalWidthCm", "NaN"),
        "'NaN' is not a number",
        line=5,
        column="PetalWidthCm",
    ),
    BadCase(
        "missing-value",
        _cell(5, "PetalLengthCm", ""),
        "missing value",
        line=5,
        column="PetalLengthCm",
    ),
    BadCase(
        "blank-value",
        _cell(5, "PetalLengthCm", "   "),
        "missing value",
        line=5,
        column="PetalLengthCm",
    ),
    BadCase(
        "negative",
        _cell(6, "PetalLengthCm", "-1.4"),
        "-1.4 cm is outside the plausible range (0, 50]",
        line=6,
        column="PetalLengthCm",
    ),
    BadCase(
        "zero",
        _cell(6, "SepalWidthCm", "0"),
        "0 cm is outside the plausible range (0, 50]",
        line=6,
        column="SepalWidthCm",
    ),
    BadCase(
        "absurd",
        _cell(7, "SepalLengthCm", "51"),
        "51 cm is outside the plausible range (0, 50]",
        line=7,
        column="SepalLengthCm",
    ),
    BadCase(
        "infinite",
        _cell(7, "PetalWidthCm", "inf"),
        "inf cm is outside the plausible range (0, 50]",
        line=7,
        column="PetalWidthCm",
    ),
    BadCase(
        "unknown-species",
        _cell(3, "Species", "Iris-germanica"),
        "unknown species 'Iris-germanica'; expected one of "
        "Iris-setosa, Iris-versicolor, Iris-virginica",
        line=3,
        column="Species",
    ),
    BadCase(
        "missing-species",
        _cell(3, "Species", ""),
        "unknown species missing value",
        line=3,
        column="Species",
    ),
    BadCase(
        "duplicate-id",
        _cell(4, "Id", "2"),
        "duplicate Id '2'",
        line=4,
        column="Id",
    ),
    BadCase(
        "ragged-short-row",
        _text(lambda t: with_line(t, 4, t[3][:-1])),
        "row has 5 fields but the header has 6",
        line=4,
        column="Species",
    ),
    BadCase(
        "ragged-long-row",
        _text(lambda t: with_line(t, 2, [*t[1], "extra"])),
        "row has 7 fields but the header has 6",
        line=2,
    ),
    BadCase(
        # Two blank lines (after lines 1 and 2) move the bad cell from line 5 to line 7.
        "after-blank-line",
        lambda t: to_text(with_cell(t, 5, "SepalLengthCm", "x")).replace("\n", "\n\n", 2).encode(),
        "'x' is not a number",
        line=7,
        column="SepalLengthCm",
    ),
    BadCase("empty-file", lambda t: b"", "file is empty (no header, no rows)"),
    BadCase(
        "header-only",
        lambda t: to_text(t[:1]).encode(),
        "file has a header but no data rows",
    ),
    BadCase(
        "too-few-rows-per-class",
        _text(lambda t: keep_rows_of(t, "Iris-setosa", MIN_ROWS_PER_CLASS - 1)),
        f"too few rows per class to stratify (Iris-setosa: {MIN_ROWS_PER_CLASS - 1};"
        f" need at least {MIN_ROWS_PER_CLASS} each)",
        column="Species",
    ),
    BadCase(
        "not-utf8",
        lambda t: to_text(t).encode().replace(b"Iris-setosa", b"Iris-s\xe9tosa", 1),
        "not a readable CSV file",
    ),
)


def bad_case(case_id: str) -> BadCase:
    return next(c for c in BAD_CASES if c.id == case_id)


def with_training_features_rotated(table: Table, *, seed: int, test_size: float) -> Table:
    """A valid table on which training learns nonsense but the test rows stay the real ones.

    The stratified split depends only on the species column, the seed and the test size,
    so the same rows land in the test set as for the untouched table. The training rows
    of each species get the measurements of the next species' training rows, so a model
    fitted on them predicts the wrong species for real flowers.
    """
    donors = {s: SPECIES[(k + 1) % len(SPECIES)] for k, s in enumerate(SPECIES)}
    return _training_measurements_from(table, donors, seed=seed, test_size=test_size)


def with_two_species_confused(table: Table, *, seed: int, test_size: float) -> Table:
    """A valid table from which training learns to confuse versicolor and virginica.

    The training rows of the two species swap their measurements (setosa and every test
    row stay as they are, and the split, which depends only on the species column, the
    seed and the test size, puts the same rows in the test set as for the untouched table).
    A model fitted on it gets setosa right and the other two wrong: clearly worse than one
    trained on the untouched table, so a retrain on that one is a genuine improvement.
    """
    versicolor, virginica = SPECIES[1:]
    donors = {versicolor: virginica, virginica: versicolor}
    return _training_measurements_from(table, donors, seed=seed, test_size=test_size)


def _training_measurements_from(
    table: Table, donors: dict[str, str], *, seed: int, test_size: float
) -> Table:
    """``table`` where the training rows of each species in ``donors`` take the measurements
    of the training rows of its donor species (paired in row order); test rows untouched."""
    header, *rows = table
    species = header.index(RAW_TARGET)
    measurements = [header.index(c) for c in RAW_TO_FEATURE]
    train_idx, _ = train_test_split(
        list(range(len(rows))),
        test_size=test_size,
        random_state=seed,
        stratify=[r[species] for r in rows],
    )
    by_species = {s: sorted(i for i in train_idx if rows[i][species] == s) for s in SPECIES}
    out = [list(r) for r in rows]
    for target, donor in donors.items():
        for t, d in zip(by_species[target], by_species[donor], strict=True):
            for col in measurements:
                out[t][col] = rows[d][col]
    return [header, *out]
