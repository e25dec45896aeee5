"""The contract shared by training and serving: column names, species, bounds, store tags."""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

RAW_TO_FEATURE = {
    "SepalLengthCm": "sepal_length",
    "SepalWidthCm": "sepal_width",
    "PetalLengthCm": "petal_length",
    "PetalWidthCm": "petal_width",
}
"""Raw CSV measurement columns and their snake_case feature names, in model input order."""

FEATURES: tuple[str, ...] = tuple(RAW_TO_FEATURE.values())
RAW_ID = "Id"
RAW_TARGET = "Species"
TARGET = "species"
RAW_COLUMNS: tuple[str, ...] = (RAW_ID, *RAW_TO_FEATURE, RAW_TARGET)

SPECIES: tuple[str, ...] = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")

CHAMPION = "champion"
"""Registry alias of the version that answers."""
CHALLENGER = "challenger"
"""Registry alias of a version being tried: shadow scoring and canary answers."""
SHADOW = "shadow"
"""Capture role of the challenger's shadow answers (captured, never returned)."""
CANARY_TAG = "canary_percent"
"""Registered-model tag: the share (0-100) of /predict the challenger answers, and to which
version (``<percent>@v<version>``, :func:`parse_canary`)."""

MAX_CM = 50.0
"""Upper bound for any measurement. Real irises stay under 10 cm; beyond 50 cm is a typo
(mm instead of cm, a stray digit) rather than a flower, so it is rejected, not predicted."""

MIN_ROWS_PER_CLASS = 5
"""Smallest class size that still puts at least one row of each species in a 20 % test split
and leaves four to train on."""


def store_tag(version: str, run_id: str) -> str:
    """BentoML store version of a registry version: the version plus its run, so re-imports
    match and a worker can find a version its own retrain already imported."""
    return f"v{version}-{run_id[:12]}"


def parse_canary(value: str | None) -> tuple[float, str | None]:
    """The canary tag (``<percent>@v<version>``) as (percent in [0, 100], version).

    Unset, unreadable or without a version means no canary: (0, None).
    """
    if not value:
        return 0.0, None
    percent, _, version = value.partition("@v")
    try:
        share = float(percent)
    except ValueError:
        share = math.nan
    share = min(max(share, 0.0), 100.0) if math.isfinite(share) else -1.0
    if share < 0 or not version:
        logger.warning("Ignoring canary tag %r: expected <percent>@v<version>", value)
        return 0.0, None
    return share, version
