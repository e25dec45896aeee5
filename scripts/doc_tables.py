"""The tables ``scripts/gen_docs.py`` writes into docs/, each rendered from its source.

- settings: every field of ``training.settings.Settings`` with its environment variable,
  default, accepted values and description.
- errors: every status of ``serving.errors.CODES`` with its code, when it happens and
  ``GENERIC``'s message, plus the specific codes that ``serving/`` passes as ``code="..."``
  (found by scanning the source: a code without a row, or a row without a code, stops it).
- cli: every ``iris-train`` command with its arguments, options and help line.
- bench, oip-bench: the committed benchmark results, rendered by ``benchmarks/report.py``
  (the code that writes ``benchmarks/README.md``); and the check that this README shows
  the committed results.
"""

from __future__ import annotations

import ast
import json
import re
import types
import typing
from pathlib import Path

import typer.main
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from benchmarks import report
from scripts.doc_checks import ROOT, env_name, shown
from serving.errors import CODES, GENERIC
from training import cli
from training.settings import PROJECT_DIR, Settings

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
    " not answer (then with `Retry-After: 5`)",
    504: "the request took longer than the server's timeout",
}
"""When each status of ``serving.errors.CODES`` happens (the code's generic meaning)."""

SPECIFIC = {
    "invalid_json": (400, "the body is not valid JSON"),
    "retrain_in_progress": (409, "a retrain is already queued or running; the body names that job"),
    "jobs_unavailable": (
        503,
        "the job records database does not answer (`/retrain`, `/jobs`); `Retry-After: 5`",
    ),
    "draining": (503, "`/readyz` after SIGTERM while the replica drains (`IRIS_DRAIN_S`)"),
}
"""Codes more specific than a status's generic one, passed as ``code="..."`` in serving/."""

CODE_LITERAL = re.compile(r"""\bcode\s*=\s*["']([a-z][a-z_]*)["']""")


# --- settings ------------------------------------------------------------------------------


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
        raise ValueError(
            f"serving.errors.CODES has {missing} with no text in WHEN (scripts/doc_tables.py)"
        )
    stale = sorted(set(WHEN) - set(CODES))
    if stale:
        raise ValueError(
            f"WHEN (scripts/doc_tables.py) describes {stale}, which serving.errors.CODES lacks"
        )
    in_source = source_codes(source) - set(CODES.values())
    undocumented = sorted(in_source - set(SPECIFIC))
    if undocumented:
        raise ValueError(
            f"serving/ returns codes {undocumented} with no row in SPECIFIC (scripts/doc_tables.py)"
        )
    gone = sorted(set(SPECIFIC) - in_source)
    if gone:
        raise ValueError(
            f"SPECIFIC (scripts/doc_tables.py) lists {gone}, which nothing in serving/ returns"
        )
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
        listed = ", ".join(f"`{o}`" for o in options) or "–"
        lines.append(f"| `{usage}` | {listed} | {command.get_short_help_str(limit=300)} |")
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
        f"{shown(readme)} {start}"
        for (start, end), body in expected.items()
        if f"{start}\n{body}\n{end}" not in text
    ]


PRODUCT = (ROOT / "service.py", ROOT / "serving", ROOT / "training")
"""What docs/architecture.md maps: the service module and the two product packages."""


def product_modules(roots: tuple[Path, ...] = PRODUCT) -> list[Path]:
    """Every product module, generated stubs (``serving/oip/proto``) left out."""
    files: list[Path] = []
    for root in roots:
        files.extend([root] if root.is_file() else sorted(root.rglob("*.py")))
    return [f for f in files if "/proto/" not in f.relative_to(ROOT).as_posix()]


def modules_table(roots: tuple[Path, ...] = PRODUCT) -> str:
    """Every product module with the first paragraph of its docstring (empty ``__init__``
    files left out)."""
    rows = ["| module | what it is |", "| --- | --- |"]
    for path in product_modules(roots):
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if path.name == "__init__.py" and not doc:
            continue
        summary = " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")
        rows.append(f"| `{path.relative_to(ROOT).as_posix()}` | {summary} |")
    return "\n".join(rows)
