"""Labelled captures as training data: what the served model learned after deployment.

Every served prediction that got ground truth through ``POST /feedback`` becomes a row in
the raw CSV layout (``Id``, the four ``*Cm`` columns, ``Species`` = the label), so it goes
through exactly the validation the shipped CSV does (training.data.load_raw: every bad
value named by file, line and column). A retrain with feedback trains on the base CSV plus
these rows; both files' digests go into the run's tags, so the lineage says which
shipped data and which labels a version learned from.

A flower with the same label sent many times (the same measurements asked about again and
again, or a label replayed) joins the data once, and not at all if the base CSV already has
it: repeats would land on both sides of the train/test split, and a candidate that learned
one flower would "win" every test copy of it at the promotion gate
(``tests/training/test_feedback_data.py``). The same measurements with different labels all
stay: that disagreement is real.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from training.atomic_files import write_atomic
from training.data import file_digest, raw_rows
from training.loop_store import FeedbackStore
from training.schema import RAW_ID, RAW_TO_FEATURE
from training.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Combined:
    path: Path
    base_rows: int
    feedback_rows: int
    lineage: dict[str, str]


def labelled(settings: Settings) -> list[tuple[float, float, float, float, str]]:
    """``(four measurements, true species)`` of every served prediction with feedback, in
    the order they were served."""
    return FeedbackStore(settings.loop_url).labelled_rows()


def export(settings: Settings, out: Path) -> int:
    """Write the labelled captures alone as a raw-layout CSV (atomically); returns rows."""
    rows = labelled(settings)
    _write(out, [_raw_row(i + 1, row) for i, row in enumerate(rows)])
    return len(rows)


def combine(settings: Settings, base: Path, out_dir: Path) -> Combined:
    """The base raw CSV followed by the labelled captures (Ids continue after the base's),
    written to a new file in ``out_dir``.

    Raises:
        ValueError: there is no labelled capture to add.
    """
    rows = labelled(settings)
    if not rows:
        raise ValueError(
            "no labelled predictions to train on: send ground truth to POST /feedback first"
        )
    base_rows = raw_rows(base)  # as the shipped CSV is read: any column order, a BOM
    start = max((int(r[0]) for r in base_rows if r and r[0].isdigit()), default=0) + 1
    seen = {_flower(r[1:]) for r in base_rows}
    extra = []
    for row in rows:
        written = _raw_row(start + len(extra), row)
        if (flower := _flower(written[1:])) not in seen:
            seen.add(flower)
            extra.append(written)
    if not extra:
        raise ValueError(
            f"all {len(rows)} labelled predictions repeat flowers {base.name} already has with "
            "those labels: nothing new to train on"
        )
    labels_digest = _digest_rows(extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{base.stem}+feedback-{labels_digest}.csv"
    _write(path, base_rows + extra)
    lineage = {
        "data.base_source": base.name,
        "data.base_sha256_16": file_digest(base),
        "data.feedback_rows": str(len(extra)),
        "data.feedback_repeats_dropped": str(len(rows) - len(extra)),
        "data.feedback_sha256_16": labels_digest,
    }
    if len(extra) < len(rows):
        logger.info(
            "%d of %d labelled predictions repeat a flower and label already in the data: "
            "each such flower is trained and tested on once",
            len(rows) - len(extra),
            len(rows),
        )
    return Combined(path, len(base_rows), len(extra), lineage)


def _flower(values: list[str]) -> tuple:
    """A row's four measurements and species, compared by value ("5" and "5.0" alike)."""
    *measurements, species = values
    key = []
    for v in measurements:
        try:
            key.append(float(v))
        except ValueError:
            key.append(v.strip())  # a bad value: compared as written, named by validation
    return (*key, species.strip())


def _raw_row(row_id: int, row) -> list[str]:
    *values, species = row
    return [str(row_id), *(f"{v:.4g}" for v in values), species]


def _digest_rows(rows: list[list[str]]) -> str:
    import hashlib

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return hashlib.sha256(buffer.getvalue().encode()).hexdigest()[:16]


def _write(path: Path, rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([RAW_ID, *RAW_TO_FEATURE, "Species"])
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())
