"""The layout rules of docs/architecture.md that a test can hold: module sizes."""

from __future__ import annotations

import ast
import re

from harness.servers import PROJECT_DIR
from scripts.doc_tables import product_modules

LIMIT = 260
"""About 250 lines, with a little slack for a docstring's own reason."""


def test_modules_over_about_250_lines_say_why():
    unexplained = []
    for path in product_modules():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > LIMIT and "250" not in doc:
            unexplained.append(f"{path.relative_to(PROJECT_DIR)} ({lines} lines)")
    assert unexplained == [], "say why in the module docstring, or split it: " + ", ".join(
        unexplained
    )


def test_the_architecture_page_names_only_files_that_exist():
    page = (PROJECT_DIR / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.])((?:[a-z_]+/)+[a-z_]+\.py|service\.py)", page))
    assert {"serving/guard.py", "service.py", "serving/runtime.py"} <= named
    missing = sorted(name for name in named if not (PROJECT_DIR / name).is_file())
    assert missing == []
