"""Load, validate and split the raw Iris CSV; publish the train/test pair atomically.

Over 250 lines because every rule names the file, line and column it refuses (ragged
rows, blank rows, headers, numbers, species, class sizes), each in its own small function,
and the published pair is swapped in atomically; validation and publishing share
:class:`Split` and one digest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from training.schema import (
    FEATURES,
    MAX_CM,
    MIN_ROWS_PER_CLASS,
    RAW_COLUMNS,
    RAW_ID,
    RAW_TARGET,
    RAW_TO_FEATURE,
    SPECIES,
    TARGET,
)

logger = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """The raw data breaks the contract; the message names file, row and column."""

    def __init__(self, path: Path, problem: str, *, line: int | None = None, column: str = ""):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.column, self.problem = path, line, column, problem


@dataclass(frozen=True)
class Split:
    """A validated, stratified train/test split with feature names already snake_case."""

    train: pd.DataFrame
    test: pd.DataFrame
    source: Path
    digest: str
    lineage: dict[str, str] = field(default_factory=dict)  # run tags: where the rows came from


def load_raw(path: Path) -> pd.DataFrame:
    """Read and validate the raw CSV.

    Args:
        path: CSV in the public Iris layout (Id, four *Cm columns, Species).

    Returns:
        The frame with snake_case feature columns and ``species``; ``Id`` dropped.

    Raises:
        DataValidationError: on any breach of the contract, naming file, line and column.
    """
    raw = _read_rows(path)
    if raw.empty:
        raise DataValidationError(path, "file has a header but no data rows")
    frame = pd.DataFrame(
        {feature: _numeric(path, raw, col) for col, feature in RAW_TO_FEATURE.items()}
    )
    frame[TARGET] = _species(path, raw)
    _check_class_sizes(path, frame)
    return frame.reset_index(drop=True)


def raw_rows(path: Path) -> list[list[str]]:
    """The rows of a raw CSV as read by :func:`load_raw` (byte-order mark, spaces after
    commas, columns in any order), as strings in ``RAW_COLUMNS`` order; its values are not
    checked here.

    Raises:
        DataValidationError: the file cannot be read, or its columns or shape are wrong.
    """
    return _read_rows(path)[list(RAW_COLUMNS)].to_numpy().tolist()


def _read_rows(path: Path) -> pd.DataFrame:
    """The data rows as strings, indexed by the file line each row starts on.

    Python's csv reader rather than pandas: pandas skips blank lines and quoted line breaks
    when numbering rows, pads a short row with NaN (blaming the wrong column) and turns a
    long first row into an index, so its row numbers could point at the wrong place.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, skipinitialspace=True, strict=True)
            header = next((r for r in reader if not _blank(r)), [])
            if not header:
                raise DataValidationError(path, "file is empty (no header, no rows)")
            _check_columns(path, header, reader.line_num)
            rows, lines = [], []
            start = reader.line_num + 1
            for record in reader:
                if not _blank(record):
                    if len(record) != len(header):
                        raise _ragged(path, header, record, start)
                    rows.append(record)
                    lines.append(start)
                start = reader.line_num + 1
    except FileNotFoundError:
        raise DataValidationError(path, "file not found") from None
    except csv.Error as e:
        raise DataValidationError(
            path, f"not a readable CSV file ({e})", line=reader.line_num
        ) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise DataValidationError(path, f"not a readable CSV file ({e})") from None
    return pd.DataFrame(rows, columns=header, index=lines, dtype=str)


def _ragged(path: Path, header: list[str], record: list[str], line: int) -> DataValidationError:
    problem = f"row has {len(record)} fields but the header has {len(header)}"
    if len(record) < len(header):
        return DataValidationError(
            path,
            f"{problem}; the row ends before this column",
            line=line,
            column=header[len(record)],
        )
    return DataValidationError(path, f"{problem}; extra field(s) after {header[-1]!r}", line=line)


def _blank(record: list[str]) -> bool:
    """A blank or whitespace-only line: it carries no row."""
    return len(record) <= 1 and not "".join(record).strip()


def _check_columns(path: Path, header: list[str], line: int) -> None:
    counts = Counter(header)
    duplicated = sorted(c for c, n in counts.items() if n > 1)
    missing = [c for c in RAW_COLUMNS if c not in counts]
    extra = [c for c in header if c not in RAW_COLUMNS]
    if duplicated:
        raise DataValidationError(path, f"duplicated column(s): {', '.join(duplicated)}", line=line)
    if missing:
        raise DataValidationError(
            path,
            f"missing column(s): {', '.join(missing)}; expected {', '.join(RAW_COLUMNS)}",
            line=line,
        )
    if extra:
        raise DataValidationError(
            path,
            f"unexpected column(s): {', '.join(extra)}; expected {', '.join(RAW_COLUMNS)}",
            line=line,
        )


def _numeric(path: Path, raw: pd.DataFrame, column: str) -> pd.Series:
    text = raw[column].fillna("").str.strip()
    values = pd.to_numeric(text, errors="coerce")
    for index in text.index[text == ""]:
        raise DataValidationError(path, "missing value", line=index, column=column)
    for index in values.index[values.isna()]:
        raise DataValidationError(
            path, f"{text[index]!r} is not a number", line=index, column=column
        )
    for index, value in values.items():
        if not (0.0 < value <= MAX_CM):  # also catches inf
            raise DataValidationError(
                path,
                f"{text[index]} cm is outside the plausible range (0, {MAX_CM:g}]",
                line=index,
                column=column,
            )
    return values.astype("float64")


def _species(path: Path, raw: pd.DataFrame) -> pd.Series:
    species = raw[RAW_TARGET].fillna("").str.strip()
    for index, value in species.items():
        if value not in SPECIES:
            shown = repr(value) if value else "missing value"
            raise DataValidationError(
                path,
                f"unknown species {shown}; expected one of {', '.join(SPECIES)}",
                line=index,
                column=RAW_TARGET,
            )
    if RAW_ID in raw and raw[RAW_ID].duplicated().any():
        index = raw.index[raw[RAW_ID].duplicated()][0]
        raise DataValidationError(
            path, f"duplicate Id {raw[RAW_ID][index]!r}", line=index, column=RAW_ID
        )
    return species


def _check_class_sizes(path: Path, frame: pd.DataFrame) -> None:
    counts = frame[TARGET].value_counts()
    short = {s: int(counts.get(s, 0)) for s in SPECIES if counts.get(s, 0) < MIN_ROWS_PER_CLASS}
    if short:
        listed = ", ".join(f"{s}: {n}" for s, n in short.items())
        raise DataValidationError(
            path,
            f"too few rows per class to stratify ({listed};"
            f" need at least {MIN_ROWS_PER_CLASS} each)",
            column=RAW_TARGET,
        )


def file_digest(path: Path) -> str:
    """Short SHA-256 of a file, recorded with every split and run."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def split(frame: pd.DataFrame, *, source: Path, seed: int, test_size: float) -> Split:
    """Stratified, seeded train/test split of a validated frame."""
    train, test = train_test_split(
        frame, test_size=test_size, random_state=seed, stratify=frame[TARGET]
    )
    return Split(
        train.reset_index(drop=True), test.reset_index(drop=True), source, file_digest(source)
    )


def write_split(data: Split, processed_dir: Path, *, seed: int) -> None:
    """Publish ``train.csv`` and ``test.csv`` as one atomic unit.

    Both files go into a fresh hidden folder; ``processed_dir`` is a symlink that is swapped
    to it with one ``rename``. Readers see the old pair or the new pair, never a mix, and a
    crash before the swap leaves the old pair untouched.
    """
    parent = processed_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / f".{processed_dir.name}-{uuid.uuid4().hex[:12]}"
    target.mkdir()
    try:
        columns = [*FEATURES, TARGET]
        data.train[columns].to_csv(target / "train.csv", index=False)
        data.test[columns].to_csv(target / "test.csv", index=False)
        manifest = {
            "source": str(data.source),
            "source_sha256_16": data.digest,
            "seed": seed,
            "rows": {"train": len(data.train), "test": len(data.test)},
        }
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_symlink(processed_dir, target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    logger.info(
        "Wrote %d train / %d test rows to %s", len(data.train), len(data.test), processed_dir
    )


def _swap_symlink(link: Path, target: Path) -> None:
    previous = link.resolve() if link.is_symlink() else None
    if link.exists() and not link.is_symlink():
        # A real folder from an older layout: move it aside once, then switch to symlinks.
        os.replace(link, link.parent / f".{link.name}-legacy-{uuid.uuid4().hex[:8]}")
    tmp_link = link.parent / f".{link.name}-link-{uuid.uuid4().hex[:8]}"
    os.symlink(target.name, tmp_link)
    os.replace(tmp_link, link)
    if previous is not None and previous != target.resolve():
        shutil.rmtree(previous, ignore_errors=True)


def read_split(processed_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the published train/test pair (both from the same folder)."""
    folder = processed_dir.resolve()
    return pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "test.csv")


def load_processed(processed_dir: Path) -> Split:
    """The published pair as a :class:`Split` (for training without re-splitting)."""
    folder = processed_dir.resolve()
    if not (folder / "train.csv").is_file() or not (folder / "test.csv").is_file():
        raise DataValidationError(
            processed_dir, "no processed train/test pair; run preprocess first"
        )
    train, test = read_split(folder)
    digest = hashlib.sha256(
        (folder / "train.csv").read_bytes() + (folder / "test.csv").read_bytes()
    )
    return Split(train, test, folder, digest.hexdigest()[:16])
