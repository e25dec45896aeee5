"""Run the ``iris-train`` CLI in a subprocess whose state lives in one folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RAW_CSV = REPO_ROOT / "data" / "raw" / "Iris.csv"
CLI_TIMEOUT_S = 300.0

_FOREIGN_PREFIXES = ("IRIS_", "MLFLOW_", "BENTOML_")


def scrubbed(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """``environ`` without ``IRIS_*``, ``MLFLOW_*`` and ``BENTOML_*`` (a developer's registry,
    tracking credentials, model store), and with BentoML's usage analytics switched off."""
    env = {k: v for k, v in environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
    env["BENTOML_DO_NOT_TRACK"] = "True"
    return env


def isolated_env(home: Path, bentoml_home: Path, **overrides: str) -> dict[str, str]:
    """Environment for a subprocess whose whole state lives under ``home``.

    The environment is :func:`scrubbed`, so that a test never reaches a real registry or
    model store, and this checkout goes first on
    ``PYTHONPATH`` so that its ``training`` package is the one under test. ``home`` is
    created if needed (it is also the subprocess's working directory).

    Args:
        home: Becomes ``IRIS_HOME`` (mlflow.db, mlruns/, data/processed, logs/).
        bentoml_home: Becomes ``BENTOML_HOME``.
        **overrides: Extra variables, e.g. ``IRIS_TRACKING_URI="http://127.0.0.1:5000"``.

    Returns:
        A complete environment for ``subprocess``.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = scrubbed(os.environ)
    pythonpath = [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        IRIS_HOME=str(home),
        BENTOML_HOME=str(bentoml_home),
        PYTHONPATH=os.pathsep.join(pythonpath),
    )
    env.update(overrides)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``iris-train ARGS`` and capture its output; a non-zero exit is not an error here.

    ``python -m training.cli`` runs the same Typer app as the ``iris-train`` script, but
    always from this checkout: an editable install can point the script at another one.
    The working directory is ``IRIS_HOME``, so a stray relative write lands there.
    """
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        cwd=env["IRIS_HOME"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class CliRunError(AssertionError):
    """An ``iris-train`` run the caller needed exited non-zero."""


def run_pipeline(env: dict[str, str], *args: str) -> dict:
    """``iris-train run ARGS``; fails the calling test with the CLI's stderr unless it succeeds.

    Raises:
        CliRunError: the run exited non-zero (an AssertionError, so pytest reports a failure
            and a benchmark stops with the CLI's own words; the harness needs no pytest).

    Returns:
        The pipeline result (``PipelineResult.to_dict()``), read from ``--result-json``.
    """
    result_path = Path(env["IRIS_HOME"]) / f"result-{uuid.uuid4().hex[:8]}.json"
    proc = run_cli("run", "--result-json", str(result_path), *args, env=env)
    if proc.returncode != 0:
        raise CliRunError(
            f"iris-train run {' '.join(args)} exited {proc.returncode}:\n{tail(proc.stderr)}"
        )
    return json.loads(result_path.read_text())


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The CLI's user-facing error lines (log records go to stderr as well)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
