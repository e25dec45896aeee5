"""Write the parts of ``docs/`` that the code and the committed results already know.

A generated section sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
in its page; everything outside the markers is written by hand. The sections:

- ``settings`` (``docs/configuration.md``): every field of ``training.settings.Settings``,
  with its environment variable, default, accepted values and description.
- ``errors`` (``docs/api.md``): every status of ``serving.errors.CODES`` with its code, when
  it happens and ``GENERIC``'s message, plus the specific codes that ``serving/`` passes as
  ``code="..."``; a code found in the source without a row here (or the other way round)
  stops the generator.
- ``cli`` (``docs/operations.md``): every ``iris-train`` command with its arguments, options
  and help line, from the Typer app in ``training/cli.py``.
- ``bench`` and ``oip-bench`` (``docs/performance.md``): the tables of
  ``benchmarks/results/latest.json`` and ``oip-latest.json``, rendered by
  ``benchmarks/report.py`` (the same code that writes ``benchmarks/README.md``).

Run ``make docs`` (``.venv/bin/python -m scripts.gen_docs``) after changing a setting, an
error code or the committed results; ``make bench`` runs it after a benchmark. ``--check``
writes nothing and exits 1 naming every stale section, broken link, unknown ``IRIS_*``
variable, or table of ``benchmarks/README.md`` that is not the committed results;
``tests/unit/test_docs.py`` runs the same checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

import typer.main
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from benchmarks import report
from serving.errors import CODES, GENERIC
from training import cli
from training.settings import PROJECT_DIR, Settings

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
SERVING = ROOT / "serving"

WHEN = {
    400: "a request that cannot be read at all (most often: `invalid_json`)",
    401: "`/retrain`, `/jobs`, `/feedback` or a model repository load/unload without the"
    " right `Authorization: Bearer` token",
    403: "that endpoint is disabled: the server has no token for it (`IRIS_ADMIN_TOKEN`,"
    " `IRIS_FEEDBACK_TOKEN`)",
    404: "no such route, job id or (for `/feedback`) prediction id",
    405: "a method the route does not take (the `Allow` header lists those it does)",
    408: "the body did not arrive within `IRIS_BODY_TIMEOUT_S`",
    409: "a conflict with the server's state (see `retrain_in_progress`)",
    413: "body over `IRIS_MAX_BODY_BYTES`, a batch over `IRIS_MAX_BATCH_SIZE` flowers, or more"
    " labels in one `/feedback` call than it takes",
    415: "a body that is not JSON (curl's default form type and `text/plain` are read as JSON)",
    422: "missing or unknown field, wrong type, NaN or infinity, out of range, empty batch;"
    " `details` names each field and row",
    429: "the server is at its concurrency limit",
    500: "a fault in the server (logged there with its traceback; never sent)",
    503: "not ready (starting, model unloaded), or a database it needs (feedback, jobs) does"
    " not answer",
    504: "the request took longer than the server's timeout",
}
"""When each status of ``serving.errors.CODES`` happens (the code's generic meaning)."""

SPECIFIC = {
    "invalid_json": (400, "the body is not valid JSON"),
    "retrain_in_progress": (409, "a retrain is already queued or running; the body names that job"),
    "jobs_unavailable": (503, "the job records database does not answer (`/retrain`, `/jobs`)"),
    "draining": (503, "`/readyz` after SIGTERM while the replica drains (`IRIS_DRAIN_S`)"),
}
"""Codes more specific than a status's generic one, passed as ``code="..."`` in serving/."""

OTHER_VARIABLES = ("IRIS_CONFORMANCE_VENV",)
"""``IRIS_*`` names the docs may mention that are not settings (test tooling)."""

CODE_LITERAL = re.compile(r"""\bcode\s*=\s*["']([a-z][a-z_]*)["']""")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
VARIABLE = re.compile(r"\bIRIS_[A-Z0-9_]*[A-Z0-9]\b")
FENCE = re.compile(r"^\s*(```|~~~)")


def marker(name: str) -> tuple[str, str]:
    """The comments that open and close the generated section ``name``."""
    return f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"


# --- settings ------------------------------------------------------------------------------


def env_name(field: str) -> str:
    """The environment variable of a settings field, e.g. ``IRIS_GRPC_PORT``."""
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _unwrap(annotation: object) -> object:
    """``X | None`` -> ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def show_default(value: object) -> str:
    """A default as the docs show it: machine-independent, in the variable's own syntax."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        if value == PROJECT_DIR:
            return "the checkout"
        if value.is_relative_to(PROJECT_DIR):
            return f"`{value.relative_to(PROJECT_DIR).as_posix()}` in the checkout"
        return f"`{value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def show_accepts(field: FieldInfo) -> str:
    """The values a field accepts: its choices, or its type and bounds."""
    kind = _unwrap(field.annotation)
    if typing.get_origin(kind) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(kind))
    names = {bool: "`true` / `false`", int: "integer", float: "number", Path: "path"}
    names |= {str: "text", SecretStr: "secret (never logged)"}
    text = names.get(kind, getattr(kind, "__name__", str(kind)))
    bounds = []
    for rule in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            limit = getattr(rule, attr, None)
            if limit is not None:
                bounds.append(
                    f"{sign} {limit:g}" if isinstance(limit, float) else f"{sign} {limit}"
                )
    return f"{text} {', '.join(bounds)}" if bounds else text


def settings_table() -> str:
    """Every field of :class:`Settings`, in declaration order."""
    lines = ["| variable | default | accepts | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"training/settings.py: field {name!r} has no description=")
        meaning = field.description.replace("|", "\\|")
        lines.append(
            f"| `{env_name(name)}` | {show_default(field.default)} | {show_accepts(field)} "
            f"| {meaning} |"
        )
    return "\n".join(lines)


# --- errors --------------------------------------------------------------------------------


def source_codes(root: Path = SERVING) -> set[str]:
    """Error codes written as ``code="..."`` literals anywhere under ``serving/``."""
    found = set()
    for path in root.rglob("*.py"):
        found.update(CODE_LITERAL.findall(path.read_text(encoding="utf-8")))
    return found


def errors_table(source: Path = SERVING) -> str:
    """Status, code, when, message: one row per ``CODES`` entry, then its specific codes.

    Args:
        source: the folder whose ``code="..."`` literals must all have a row.

    Raises:
        ValueError: a status or code without a row, or a row for one that no longer exists.
    """
    missing = sorted(set(CODES) - set(WHEN))
    if missing:
        raise ValueError(f"serving.errors.CODES has {missing} with no text in gen_docs.WHEN")
    stale = sorted(set(WHEN) - set(CODES))
    if stale:
        raise ValueError(f"gen_docs.WHEN describes {stale}, which serving.errors.CODES lacks")
    in_source = source_codes(source) - set(CODES.values())
    undocumented = sorted(in_source - set(SPECIFIC))
    if undocumented:
        raise ValueError(f"serving/ returns codes {undocumented} with no row in gen_docs.SPECIFIC")
    gone = sorted(set(SPECIFIC) - in_source)
    if gone:
        raise ValueError(f"gen_docs.SPECIFIC lists {gone}, which nothing in serving/ returns")
    lines = ["| status | code | when | message |", "| --: | --- | --- | --- |"]
    for status in sorted(CODES):
        message = f"“{GENERIC[status]}”" if status in GENERIC else "names the problem"
        lines.append(f"| {status} | `{CODES[status]}` | {WHEN[status]} | {message} |")
        for code, (code_status, when) in sorted(SPECIFIC.items()):
            if code_status == status:
                lines.append(f"| {status} | `{code}` | {when} | names the problem |")
    return "\n".join(lines)


# --- training CLI --------------------------------------------------------------------------


def cli_table() -> str:
    """Every ``iris-train`` command: how to call it, its options, its help line."""
    group = typer.main.get_command(cli.app)
    lines = ["| command | options | what it does |", "| --- | --- | --- |"]
    for name, command in group.commands.items():
        # Typer ships its own click: tell parameters apart by kind, not by class.
        params = command.params
        arguments = [p.name.upper() for p in params if p.param_type_name == "argument"]
        options = [
            "/".join([*p.opts, *p.secondary_opts]) for p in params if p.param_type_name == "option"
        ]
        usage = " ".join(["iris-train", name, *arguments])
        shown = ", ".join(f"`{o}`" for o in options) or "–"
        lines.append(f"| `{usage}` | {shown} | {command.get_short_help_str(limit=300)} |")
    return "\n".join(lines)


# --- benchmarks ----------------------------------------------------------------------------


def _result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def bench_tables() -> str:
    """``make bench``'s last committed run: targets, load, memory and batch tables."""
    result = _result("latest.json")
    lines = [report.header(result), "", *report.targets_table(result), ""]
    lines += [*report.load_table(result), "", *report.memory_table(result)]
    batch = report.batch_table(result)
    if batch:
        lines += ["", *batch]
    return "\n".join(lines)


def oip_bench_tables() -> str:
    """The Open Inference Protocol comparison's last committed run: the ratios of that run."""
    result = _result("oip-latest.json")
    return "\n".join([report.oip_header(result), "", *report.oip_ratio_table(result)])


def results_readme_mismatches(readme: Path = report.README) -> list[str]:
    """Tables of ``benchmarks/README.md`` that are not those of the committed results.

    ``make bench`` writes both the JSON and that README; a result committed without its
    README (or the other way round) shows up here.
    """
    text = readme.read_text(encoding="utf-8")
    expected = {
        (report.START, report.END): report.markdown(_result("latest.json")),
        (report.OIP_START, report.OIP_END): report.oip_markdown(_result("oip-latest.json")),
    }
    return [
        f"{_shown(readme)} {start}"
        for (start, end), body in expected.items()
        if f"{start}\n{body}\n{end}" not in text
    ]


SECTIONS: dict[str, tuple[Path, Callable[[], str]]] = {
    "settings": (DOCS / "configuration.md", settings_table),
    "errors": (DOCS / "api.md", errors_table),
    "cli": (DOCS / "operations.md", cli_table),
    "bench": (DOCS / "performance.md", bench_tables),
    "oip-bench": (DOCS / "performance.md", oip_bench_tables),
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
            raise ValueError(f"{_shown(path)} [{name}]: {error}") from error
    return pages


def stale_sections(sections: dict[str, tuple[Path, Callable[[], str]]] = SECTIONS) -> list[str]:
    """Generated sections whose page differs from what the generator writes now."""
    stale = []
    for name, (path, render) in sections.items():
        text = path.read_text(encoding="utf-8")
        if fill(text, name, render()) != text:
            stale.append(f"{_shown(path)} [{name}]")
    return stale


def _shown(path: Path) -> str:
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
                where = f"{_shown(page)}: ({target})"
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
            found.append(f"{_shown(page)}: {name}")
    return found


def main(argv: list[str] | None = None) -> int:
    """Regenerate every section (or, with ``--check``, report what is out of date)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if stale.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        problems = [f"stale: {s} (run make docs)" for s in stale_sections()]
        problems += [f"broken link: {b}" for b in broken_links()]
        problems += [f"not the committed results: {t}" for t in results_readme_mismatches()]
        problems += [f"unknown variable: {v}" for v in unknown_variables()]
        for problem in problems:
            logger.error(problem)
        return 1 if problems else 0
    for path, (old, new) in regenerate().items():
        if new != old:
            path.write_text(new, encoding="utf-8")
            logger.info("wrote %s", _shown(path))
        else:
            logger.info("%s is up to date", _shown(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
