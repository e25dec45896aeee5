"""Write the parts of ``docs/`` that the code and the committed results already know.

A generated section sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
in its page; everything outside the markers is written by hand. The sections and their
sources (rendered by ``scripts/doc_tables.py``):

- ``settings`` in ``docs/configuration.md``: ``training.settings.Settings``;
- ``errors`` in ``docs/api.md``: ``serving.errors.CODES``, ``GENERIC`` and the ``code="..."``
  literals of ``serving/``;
- ``cli`` in ``docs/operations.md``: the Typer app of ``training/cli.py``;
- ``modules`` in ``docs/architecture.md``: the docstrings of ``service.py``, ``serving/``
  and ``training/``;
- ``bench`` and ``oip-bench`` in ``docs/performance.md``:
  ``benchmarks/results/latest.json`` and ``oip-latest.json``.

Run ``make docs`` (``.venv/bin/python -m scripts.gen_docs``) after changing a setting, an
error code, a command or the committed results; ``make bench`` runs it after a benchmark.
``--check`` writes nothing and exits 1 naming every stale section, broken link, unknown
``IRIS_*`` variable (``scripts/doc_checks.py``), or table of ``benchmarks/README.md`` that
is not the committed results; ``tests/unit/test_docs.py`` runs the same checks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from scripts import doc_tables
from scripts.doc_checks import DOCS, broken_links, shown, unknown_variables

logger = logging.getLogger(__name__)


def marker(name: str) -> tuple[str, str]:
    """The comments that open and close the generated section ``name``."""
    return f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"


SECTIONS: dict[str, tuple[Path, Callable[[], str]]] = {
    "settings": (DOCS / "configuration.md", doc_tables.settings_table),
    "errors": (DOCS / "api.md", doc_tables.errors_table),
    "cli": (DOCS / "operations.md", doc_tables.cli_table),
    "modules": (DOCS / "architecture.md", doc_tables.modules_table),
    "bench": (DOCS / "performance.md", doc_tables.bench_tables),
    "oip-bench": (DOCS / "performance.md", doc_tables.oip_bench_tables),
}


# --- writing and checking ------------------------------------------------------------------


def fill(text: str, name: str, body: str) -> str:
    """``text`` with the section ``name`` replaced by ``body``.

    Raises:
        ValueError: the page lacks either marker of the section.
    """
    start, end = marker(name)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one {start} followed by one {end}")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{start}\n{body}\n{end}{tail}"


def regenerate() -> dict[Path, tuple[str, str]]:
    """``{page: (text on disk, text with every section regenerated)}``."""
    pages: dict[Path, tuple[str, str]] = {}
    for name, (path, render) in SECTIONS.items():
        old = pages[path][0] if path in pages else path.read_text(encoding="utf-8")
        new = pages[path][1] if path in pages else old
        try:
            pages[path] = (old, fill(new, name, render()))
        except ValueError as error:
            raise ValueError(f"{shown(path)} [{name}]: {error}") from error
    return pages


def stale_sections(sections: dict[str, tuple[Path, Callable[[], str]]] = SECTIONS) -> list[str]:
    """Generated sections whose page differs from what the generator writes now."""
    stale = []
    for name, (path, render) in sections.items():
        text = path.read_text(encoding="utf-8")
        if fill(text, name, render()) != text:
            stale.append(f"{shown(path)} [{name}]")
    return stale


def main(argv: list[str] | None = None) -> int:
    """Regenerate every section (or, with ``--check``, report what is out of date)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if stale.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        problems = [f"stale: {s} (run make docs)" for s in stale_sections()]
        problems += [f"broken link: {b}" for b in broken_links()]
        problems += [
            f"not the committed results: {t}" for t in doc_tables.results_readme_mismatches()
        ]
        problems += [f"unknown variable: {v}" for v in unknown_variables()]
        for problem in problems:
            logger.error(problem)
        return 1 if problems else 0
    for path, (old, new) in regenerate().items():
        if new != old:
            path.write_text(new, encoding="utf-8")
            logger.info("wrote %s", shown(path))
        else:
            logger.info("%s is up to date", shown(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
