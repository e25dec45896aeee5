"""``iris-train drift-report``: one self-contained HTML page on how the served model is doing.

From the capture files (what was asked and answered), the loop database (ground truth)
and the version's reference profile (its training data), it draws:

- per feature, the training distribution against the recent inputs (cumulative
  distributions), with PSI and KS;
- class shares: training labels against recent answers;
- live accuracy over time, per model version, from the labelled answers.

Plots are PNGs embedded in the page (matplotlib, already a dependency): the file can be
mailed or attached to a ticket as is. Evidently, the field's common choice, was tried and
does not fit: 0.7.23 fails to import beside pandas 3.1 (it imports
``pandas.core.dtypes.common.infer_dtype_from_object``, gone in pandas 3), and it would add
about 1 GB of packages to the image.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training import reference_profile
from training.loop_store import FeedbackStore
from training.schema import FEATURES, SHADOW, SPECIES
from training.settings import Settings


class ReportError(RuntimeError):
    """The report cannot be made; the message says what is missing."""


@dataclass(frozen=True)
class DriftReport:
    path: Path
    version: str
    rows: int
    drift: dict[str, tuple[float, float]]


def recent_captures(capture_dir: Path, rows: int) -> pd.DataFrame:
    """The newest ``rows`` answered predictions (shadow scores left out)."""
    days = sorted(capture_dir.glob("date=*"), reverse=True) if capture_dir.is_dir() else []
    frames, found = [], 0
    for day in days:  # newest days first, and only as many as the window needs
        if not any(day.glob("*/part-*.parquet")):
            continue
        frame = pd.read_parquet(day)
        frame = frame[frame["role"] != SHADOW]
        frames.append(frame)
        found += len(frame)
        if found >= rows:
            break
    if not found:
        raise ReportError(f"no captured predictions in {capture_dir} (IRIS_CAPTURE_DIR)")
    # A worker merging its files may briefly leave a row in two files: count it once.
    frame = pd.concat(frames).drop_duplicates("prediction_id")
    return frame.sort_values("time").tail(rows)


def champion_profile(settings: Settings, version: str | None) -> tuple[str, dict]:
    """(version, reference profile) of ``version`` (default: the champion) from the registry."""
    import mlflow

    from training import aliases, registry

    registry.configure(settings)
    version = version or aliases.champion_version(settings)
    if version is None:
        raise ReportError(f"{settings.model_name} has no champion; pass --version")
    with tempfile.TemporaryDirectory(prefix="iris-report-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.model_name}/{version}", dst_path=tmp
        )
        profile = reference_profile.read(Path(path))
    if profile is None:
        raise ReportError(f"v{version} was trained before reference profiles were recorded")
    return version, profile


def build(
    settings: Settings, out: Path, *, version: str | None = None, rows: int | None = None
) -> DriftReport:
    """Write the report to ``out`` (atomically) and return what it found."""
    recent = recent_captures(settings.capture_dir, rows or settings.drift_window_rows)
    version, profile = champion_profile(settings, version)
    values = recent[list(FEATURES)].to_numpy(dtype=float)
    drift = reference_profile.drift(profile, values)
    since = time.time() - settings.capture_retention_days * 86400
    try:
        history = FeedbackStore(settings.loop_url).labelled_history(since)
    except Exception as e:  # noqa: BLE001 - the report still shows drift without labels
        history, note = [], f"ground truth unavailable: {type(e).__name__}"
    else:
        note = "" if history else "no ground truth received yet (POST /feedback)"
    page = _page(version, profile, recent, drift, history, note)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(out)
    return DriftReport(out, version, len(recent), drift)


def _page(version, profile, recent, drift, history, note) -> str:
    span = f"{recent['time'].min():%Y-%m-%d %H:%M} to {recent['time'].max():%Y-%m-%d %H:%M} UTC"
    rows = "".join(
        f"<tr><td>{name}</td><td>{psi:.3f}</td><td>{ks:.3f}</td>"
        f"<td>{'shifted' if psi > 0.25 else 'moderate' if psi > 0.1 else 'stable'}</td></tr>"
        for name, (psi, ks) in drift.items()
    )
    figures = [_feature_figure(profile, recent, drift), _class_figure(profile, recent)]
    if history:
        figures.append(_accuracy_figure(history))
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{png}">' for png in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Iris drift report, v{version}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}
img{{max-width:100%;display:block;margin:1em 0}}</style></head><body>
<h1>Drift report: iris-classifier v{version}</h1>
<p>{len(recent)} recent answers, {span}, against the {profile["rows"]} training rows of
v{version} (data digest {html.escape(profile.get("data_sha256_16", ""))}).</p>
<table><tr><th>feature</th><th>PSI</th><th>KS</th><th>reading</th></tr>{rows}</table>
<p>PSI under 0.1: stable; 0.1 to 0.25: moderate; over 0.25: shifted (the alert's line).</p>
<p>{html.escape(note)}</p>
{images}
</body></html>
"""


def _png(fig) -> str:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _feature_figure(profile, recent, drift) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(FEATURES), figsize=(16, 3.6))
    for ax, name in zip(axes, FEATURES, strict=True):
        quantiles = profile["features"][name]["quantiles"]
        ax.plot(quantiles, reference_profile.QUANTILES, label="training")
        values = np.sort(recent[name].to_numpy(dtype=float))
        ax.plot(values, np.arange(1, len(values) + 1) / len(values), label="recent")
        psi, ks = drift[name]
        ax.set_title(f"{name}\nPSI {psi:.2f}, KS {ks:.2f}")
        ax.set_xlabel("cm")
    axes[0].set_ylabel("cumulative share")
    axes[0].legend()
    fig.tight_layout()
    return _png(fig)


def _class_figure(profile, recent) -> str:
    from matplotlib import pyplot as plt

    shares = recent["species"].value_counts(normalize=True)
    x = np.arange(len(SPECIES))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(x - 0.2, [profile["class_shares"][s] for s in SPECIES], 0.4, label="training")
    ax.bar(x + 0.2, [float(shares.get(s, 0.0)) for s in SPECIES], 0.4, label="recent answers")
    ax.set_xticks(x, SPECIES)
    ax.set_ylabel("share")
    ax.set_title("Class shares")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _accuracy_figure(history) -> str:
    from matplotlib import pyplot as plt

    frame = pd.DataFrame(history, columns=["time", "version", "correct"])
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    fig, ax = plt.subplots(figsize=(10, 3.4))
    for version, group in frame.groupby("version"):
        hourly = group.set_index("time")["correct"].resample("1h").mean().dropna()
        ax.plot(hourly.index, hourly.to_numpy(), marker="o", label=f"v{version}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (labelled answers)")
    ax.set_title("Live accuracy over time, hourly")
    ax.legend()
    fig.tight_layout()
    return _png(fig)
