"""Checks on README.md and docs/*.md: relative links, their anchors, ``IRIS_*`` names.

A link must lead to an existing file and, for a ``#anchor`` into a Markdown page, to one of
its headings (GitHub's anchors). Every ``IRIS_*`` name the pages mention must be a field of
``training.settings.Settings`` (or a listed tool variable), so that a renamed or removed
setting cannot linger in the docs. Run by ``python -m scripts.gen_docs --check`` and by
``tests/unit/test_docs.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

OTHER_VARIABLES = ("IRIS_CONFORMANCE_VENV",)
"""``IRIS_*`` names the docs may mention that are not settings (test tooling)."""

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
VARIABLE = re.compile(r"\bIRIS_[A-Z0-9_]*[A-Z0-9]\b")
FENCE = re.compile(r"^\s*(```|~~~)")


def env_name(field: str) -> str:
    """The environment variable of a settings field, e.g. ``IRIS_GRPC_PORT``."""
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def checked_pages() -> list[Path]:
    """The pages whose links and variables are checked: README.md and docs/*.md."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> list[str]:
    """Lines outside fenced code blocks (links and headings there are not Markdown)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown page (repeats get ``-1``, ``-2``, as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(pages: list[Path] | None = None) -> list[str]:
    """Relative links (and their ``#anchors`` into Markdown pages) that lead nowhere."""
    broken = []
    for page in pages or checked_pages():
        for line in _prose(page.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # http:, https:, mailto:
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                where = f"{shown(page)}: ({target})"
                if not dest.exists():
                    broken.append(f"{where} no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{where} no heading with that anchor")
    return broken


def unknown_variables(pages: list[Path] | None = None) -> list[str]:
    """``IRIS_*`` names in the docs that no setting (or listed tool variable) has."""
    known = {env_name(name) for name in Settings.model_fields} | set(OTHER_VARIABLES)
    found = []
    for page in pages or checked_pages():
        for name in sorted(set(VARIABLE.findall(page.read_text(encoding="utf-8"))) - known):
            found.append(f"{shown(page)}: {name}")
    return found
