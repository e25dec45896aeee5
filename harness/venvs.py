"""Virtual environments for tools whose pins clash with ours (protobuf < 7, older FastAPI).

Built once per machine from a requirements file of exact versions, in a folder keyed by
that file's hash (a changed file gets a new venv), under a file lock so parallel test
workers build it once. A venv cannot be moved (its scripts name their interpreter by
absolute path), so it is built in place and marked complete at the end; a folder without
the mark (an interrupted build) is built again.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

COMPLETE = ".complete"


def venv_python(requirements: Path, root: Path, check_import: str) -> Path:
    """The python of the venv for ``requirements`` under ``root``-HASH (built if missing).

    Args:
        requirements: pip requirements file with exact versions.
        root: Path prefix for the venv folder (``/var/tmp/NAME`` gives ``/var/tmp/NAME-HASH``).
        check_import: Module(s) the venv must import, e.g. ``"kserve, tritonclient.http"``.
    """
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    target = root.parent / f"{root.name}-{digest}"
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(target.name + ".lock")
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not (target / COMPLETE).exists():
            _build(requirements, target)
    python = target / "bin" / "python"
    subprocess.run([str(python), "-c", f"import {check_import}"], check=True, timeout=120)
    return python


def _build(requirements: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(target)], check=True, timeout=300)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, timeout=600)
    subprocess.run([*pip, "-r", str(requirements)], check=True, timeout=1800)
    (target / COMPLETE).write_text(requirements.read_text())
