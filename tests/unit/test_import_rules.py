"""The import rule of docs/architecture.md, checked by import-linter's contracts in
pyproject.toml: service.py -> serving -> training; tests and benchmarks share harness and
never import each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from harness.servers import PROJECT_DIR

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["importlinter"][
    "root_packages"
]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_code_keeps_the_import_rule():
    result = lint_imports(PROJECT_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_training_module_importing_serving_breaks_the_rule(tmp_path):
    """The same contracts on a tree with one forbidden import: lint-imports must say so."""
    shutil.copy(PROJECT_DIR / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "serving" / "runtime.py").write_text("X = 1\n")
    (tmp_path / "training" / "pipeline.py").write_text("from serving.runtime import X\n")
    (tmp_path / "benchmarks" / "run.py").write_text("import tests\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "training.pipeline -> serving.runtime" in result.stdout, result.stdout
    assert "benchmarks.run -> tests" in result.stdout, result.stdout
    assert "2 broken" in result.stdout
