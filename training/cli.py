"""``iris-train``: one command per pipeline stage, and ``run`` for all of them."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from training.atomic_files import write_atomic
from training.settings import Settings, get_settings

logger = logging.getLogger("training.cli")
app = typer.Typer(help="Train, register and import the Iris classifier.", no_args_is_help=True)
T = TypeVar("T")

RawOption = Annotated[
    Path | None,
    typer.Option("--raw", help="Raw Iris CSV (default: IRIS_RAW_DATA or data/raw/Iris.csv)."),
]


def _setup() -> Settings:
    from training.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_dir, "training.log")
    # We load models through training.model_io (skops + our trusted list); MLflow's own
    # loader is never used for serving, so its pickle switch stays off.
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    # GitPython (imported by MLflow) warns at length when no git binary is found.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return settings


def _guarded(stage: str, action: Callable[[], T]) -> T:
    """Run a stage; on failure log the traceback to the file and exit 1 with one line."""
    try:
        return action()
    except Exception as e:
        logger.exception("%s failed: %s", stage, e)
        typer.echo(f"error: {stage} failed: {e}".splitlines()[0], err=True)
        raise typer.Exit(1) from None


def _on_registry(settings: Settings, fn: Callable[..., T], *args) -> Callable[[], T]:
    """``fn(*args)`` once MLflow points at the configured registry (for :func:`_guarded`)."""

    def action() -> T:
        from training import registry

        registry.configure(settings)
        return fn(*args)

    return action


@app.command()
def preprocess(raw: RawOption = None) -> None:
    """Validate the raw CSV and write the stratified train/test split atomically."""
    from training.pipeline import preprocess as run_preprocess

    settings = _setup()
    split = _guarded("preprocess", lambda: run_preprocess(settings, raw))
    typer.echo(f"train={len(split.train)} test={len(split.test)} -> {settings.processed_dir}")


@app.command()
def train() -> None:
    """Train both candidates on the processed split, register the best, gate promotion."""
    from training.data import load_processed
    from training.pipeline import train_and_register

    settings = _setup()
    result = _guarded(
        "train", lambda: train_and_register(load_processed(settings.processed_dir), settings)
    )
    typer.echo(json.dumps(result.to_dict(), indent=2))


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registry version to make champion.")],
) -> None:
    """Move the champion alias to VERSION (promotion or rollback)."""
    from training import registry

    settings = _setup()
    decision = _guarded("promote", _on_registry(settings, registry.promote, version, settings))
    typer.echo(f"{settings.model_name}@champion -> v{decision.version}")


@app.command()
def canary(
    percent: Annotated[
        float, typer.Argument(help="Share of /predict the challenger answers, 0-100 (0 ends).")
    ],
) -> None:
    """Send PERCENT of /predict to the challenger; every server follows without restart."""
    from training import canary

    settings = _setup()
    version = _guarded("canary", _on_registry(settings, canary.set_canary, percent, settings))
    if version is None:
        typer.echo("canary ended: the champion answers everything")
    else:
        typer.echo(f"{percent:g}% of /predict -> challenger v{version}")


@app.command("promote-challenger")
def promote_challenger() -> None:
    """Make the challenger champion and end the canary."""
    from training import canary

    settings = _setup()
    decision = _guarded(
        "promote-challenger", _on_registry(settings, canary.promote_challenger, settings)
    )
    typer.echo(f"{settings.model_name}@champion -> v{decision.version}")


@app.command("import")
def import_(
    version: Annotated[
        str | None, typer.Option(help="Registry version to import (default: the champion).")
    ] = None,
) -> None:
    """Import a registered version (default: champion) into the BentoML model store."""
    from training import bento_store

    settings = _setup()
    imported = _guarded(
        "import", _on_registry(settings, bento_store.import_champion, settings, version)
    )
    typer.echo(f"{imported.tag} ({'imported' if imported.created else 'already present'})")


@app.command()
def run(
    raw: RawOption = None,
    bento_import: Annotated[
        bool,
        typer.Option("--import/--no-import", help="Import the champion into the BentoML store."),
    ] = True,
    result_json: Annotated[
        Path | None, typer.Option(help="Also write the result as JSON to this file (atomically).")
    ] = None,
    with_feedback: Annotated[
        bool,
        typer.Option(
            "--with-feedback",
            help="Also train on served predictions that got ground truth (POST /feedback).",
        ),
    ] = False,
) -> None:
    """Run the whole pipeline: preprocess, train, register, gate, import."""
    from training.pipeline import run as run_pipeline

    settings = _setup()
    result = _guarded(
        "pipeline",
        lambda: run_pipeline(
            settings, raw, import_to_bento=bento_import, with_feedback=with_feedback
        ),
    )
    text = json.dumps(result.to_dict(), indent=2)
    if result_json is not None:
        write_atomic(result_json, text)
    typer.echo(text)


@app.command()
def champion() -> None:
    """Print the current champion version (exit 1 if there is none)."""
    from training import aliases

    settings = _setup()
    version = _guarded("champion", _on_registry(settings, aliases.champion_version, settings))
    if version is None:
        typer.echo("no champion", err=True)
        raise typer.Exit(1)
    typer.echo(version)


@app.command("export-feedback")
def export_feedback(
    out: Annotated[Path, typer.Option(help="CSV to write, in the raw data layout.")],
) -> None:
    """Write served predictions that got ground truth as a raw-layout CSV (Species = label)."""
    from training import feedback_data

    settings = _setup()
    rows = _guarded("export-feedback", lambda: feedback_data.export(settings, out))
    typer.echo(f"{out}: {rows} labelled predictions")


@app.command("drift-report")
def drift_report(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("drift-report.html"),
    version: Annotated[
        str | None, typer.Option(help="Registry version to compare with (default: champion).")
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option(help="Newest captured answers to use (default: IRIS_DRIFT_WINDOW_ROWS)."),
    ] = None,
) -> None:
    """Write a self-contained HTML report: recent inputs vs training data, class shares,
    live accuracy over time (from the captures and the feedback database)."""
    from training import drift_report as report

    settings = _setup()
    built = _guarded(
        "drift-report", lambda: report.build(settings, out, version=version, rows=rows)
    )
    worst = max(built.drift.items(), key=lambda kv: kv[1][0])
    typer.echo(
        f"{built.path}: {built.rows} answers vs v{built.version}'s training data;"
        f" largest PSI {worst[1][0]:.3f} ({worst[0]})"
    )


if __name__ == "__main__":
    app()
