"""Every notebook in notebooks/ runs top to bottom, is committed clean, and writes nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harness.cli import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120
_NOT_CONTENT = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
}
_OTHER_TESTS = (".containers", ".metrics", ".hypothesis", ".import_linter_cache", ".venv-")
"""What other tests write at the checkout's root meanwhile (xdist runs them beside the
notebook): container storage (scripts/container/env.sh), servers' Prometheus files,
Hypothesis's and import-linter's caches, tool venvs and their lock files (``.venv-*``)."""


def _venv_kernel_manager():
    """A kernel manager that starts ipykernel with this very interpreter.

    The notebook asks for ``python3``; Jupyter resolves that name through kernelspec
    folders (``~/.local/share/jupyter`` first), which on a developer machine may point at
    another Python without this project installed. Starting the kernel from
    ``sys.executable`` needs only ``ipykernel`` in the venv (the ``dev`` extra).
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class VenvKernelSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python ({sys.executable})",
                language="python",
                name=kernel_name,
            )

    return KernelManager(kernel_name="python3", kernel_spec_manager=VenvKernelSpecs())


def _repo_files() -> dict[str, tuple[int, int]]:
    """Size and mtime of every file in the checkout, caches and virtualenvs excepted."""
    files = {}
    for folder, dirs, names in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in _NOT_CONTENT and not d.endswith(".egg-info")]
        if folder == str(REPO_ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(_OTHER_TESTS)]
            names = [n for n in names if not n.startswith(_OTHER_TESTS)]
        for name in names:
            path = Path(folder, name)
            stat = path.stat()
            files[str(path.relative_to(REPO_ROOT))] = (stat.st_size, stat.st_mtime_ns)
    return files


def test_there_is_an_exploratory_notebook() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01-explore-iris.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]

    assert code, "a notebook without code cells tests nothing"
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_writes_nothing_into_the_repo(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    # Kernel bookkeeping (connection file, IPython profile, font cache) goes to tmp_path.
    for var in ("JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(path, as_version=4)
    before = _repo_files()

    NotebookClient(
        notebook,
        km=_venv_kernel_manager(),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},  # run where Jupyter would
    ).execute()

    assert _repo_files() == before
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the scatter plot is missing"
