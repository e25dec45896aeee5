"""The reference profile of a model's training data, and how far live data has moved from it.

Training writes one profile beside every logged model (``reference/profile.json`` in the
model's MLflow artifacts, so the registry version and the BentoML model imported from it
both carry it). Serving compares recent inputs against it, with the two measures drift
monitors commonly use:

- **PSI** (population stability index) over the reference's decile bins. Rules of thumb:
  under 0.1 stable, 0.1-0.25 a moderate shift, over 0.25 a shift worth acting on.
- **KS**, the two-sample Kolmogorov-Smirnov statistic: the largest gap between the
  reference's and the recent data's cumulative distributions (0 to 1).

Class shares of the training labels are recorded too, to compare with predicted shares.
The profile is plain JSON with no pickled objects, so any process can read it safely.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.schema import FEATURES, SPECIES, TARGET

if TYPE_CHECKING:  # serving workers read profiles without importing pandas (~40 MiB)
    import pandas as pd

PROFILE_DIR = "reference"
PROFILE_FILE = "profile.json"
SCHEMA_VERSION = 1
QUANTILES = np.linspace(0.0, 1.0, 101)
"""Percentiles kept per feature: the reference distribution for KS, and the decile edges."""
_EPSILON = 1e-4
"""Share given to an empty bin, so PSI stays finite when a bin has no rows."""


def build(train: pd.DataFrame, digest: str = "") -> dict:
    """The profile of a training frame (snake_case features and ``species``)."""
    features = {}
    for name in FEATURES:
        values = train[name].to_numpy(dtype=float)
        quantiles = np.quantile(values, QUANTILES)
        edges = quantiles[10:100:10]  # the nine inner decile edges: ten bins
        features[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=0)),
            "min": float(values.min()),
            "max": float(values.max()),
            "quantiles": [round(float(q), 6) for q in quantiles],
            "bin_edges": [round(float(e), 6) for e in edges],
            "bin_shares": [round(float(s), 6) for s in _shares(values, edges)],
        }
    counts = train[TARGET].value_counts()
    return {
        "schema": SCHEMA_VERSION,
        "rows": len(train),
        "data_sha256_16": digest,
        "features": features,
        "class_shares": {s: round(float(counts.get(s, 0)) / len(train), 6) for s in SPECIES},
    }


def write(profile: dict, folder: Path) -> Path:
    """Write ``profile`` as ``folder/reference/profile.json``; returns the file."""
    path = folder / PROFILE_DIR / PROFILE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=1))
    return path


def read(model_dir: Path) -> dict | None:
    """The profile stored in a model folder, or None for a model trained before profiles."""
    path = model_dir / PROFILE_DIR / PROFILE_FILE
    if not path.is_file():
        return None
    profile = json.loads(path.read_text())
    if profile.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path}: profile schema {profile.get('schema')!r} is not supported")
    return profile


def psi(feature: dict, values: np.ndarray) -> float:
    """Population stability index of ``values`` against one feature's reference bins."""
    expected = np.maximum(np.asarray(feature["bin_shares"]), _EPSILON)
    actual = np.maximum(_shares(values, np.asarray(feature["bin_edges"])), _EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(feature: dict, values: np.ndarray) -> float:
    """KS statistic between ``values`` and the reference distribution (its percentiles)."""
    reference = np.asarray(feature["quantiles"])
    values = _comparable(values)
    points = np.union1d(reference, values)
    ref_cdf = np.interp(points, reference, QUANTILES, left=0.0, right=1.0)
    live = np.sort(values)
    live_cdf = np.searchsorted(live, points, side="right") / len(live)
    return float(np.max(np.abs(ref_cdf - live_cdf)))


def drift(profile: dict, values: np.ndarray) -> dict[str, tuple[float, float]]:
    """``{feature: (psi, ks)}`` of an (n, 4) array against a reference profile."""
    return {
        name: (
            psi(profile["features"][name], values[:, i]),
            ks(profile["features"][name], values[:, i]),
        )
        for i, name in enumerate(FEATURES)
    }


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins the edges make."""
    values = _comparable(values)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def _comparable(values: np.ndarray) -> np.ndarray:
    """Values rounded to 1e-5 cm. Served inputs are float32 (3.1 arrives as 3.0999999):
    unrounded, every value on a bin edge would fall into the bin below it."""
    return np.round(np.asarray(values, dtype=np.float64), 5)
