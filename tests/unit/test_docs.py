"""The docs say what the code and the committed results say, and their links lead somewhere.

The generated sections (settings, errors, CLI, benchmark tables) are regenerated in memory
and compared with the pages; ``make docs`` (``scripts/gen_docs.py``) rewrites them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from scripts import doc_checks, doc_tables, gen_docs
from serving.errors import CODES
from training.settings import Settings

ROOT = doc_checks.ROOT
DOCS = doc_checks.DOCS


def table_rows(text: str, name: str) -> list[list[str]]:
    """Cells of every body row of the generated section ``name``."""
    start, end = gen_docs.marker(name)
    section = text.split(start, 1)[1].split(end, 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def test_every_generated_section_is_up_to_date() -> None:
    assert gen_docs.stale_sections() == [], "run `make docs` and commit the result"


def test_a_page_that_differs_from_the_code_is_reported_stale(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    current = (DOCS / "configuration.md").read_text()
    page.write_text(current.replace("`IRIS_GRPC_PORT` | `8001`", "`IRIS_GRPC_PORT` | `9001`"))
    assert page.read_text() != current
    stale = gen_docs.stale_sections({"settings": (page, doc_tables.settings_table)})
    assert stale == [f"{page} [settings]"]


def test_a_page_without_its_markers_is_refused_by_name(tmp_path: Path) -> None:
    page = tmp_path / "api.md"
    page.write_text("# API\n\n<!-- generated:errors -->\nno end marker\n")
    with pytest.raises(ValueError, match="/generated:errors"):
        gen_docs.stale_sections({"errors": (page, doc_tables.errors_table)})


def test_settings_table_has_every_field_under_the_variable_settings_reads(monkeypatch) -> None:
    rows = table_rows((DOCS / "configuration.md").read_text(), "settings")
    by_variable = {row[0].strip("`"): row for row in rows}
    assert len(by_variable) == len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert by_variable[f"IRIS_{name.upper()}"][3] == field.description
    assert by_variable["IRIS_GRPC_PORT"][1:3] == ["`8001`", "integer ≥ 0, ≤ 65535"]
    assert by_variable["IRIS_HOME"][1] == "the checkout"  # never this machine's path
    assert by_variable["IRIS_SELECTION_METRIC"][2].count("`") == 6  # the three choices
    # The name in the table is the one Settings really reads.
    monkeypatch.setenv("IRIS_GRPC_PORT", "9123")
    monkeypatch.setenv("IRIS_SHADOW_RATE", "0.25")
    settings = Settings()
    assert (settings.grpc_port, settings.shadow_rate) == (9123, 0.25)


def test_error_table_has_every_status_and_every_code_the_service_returns() -> None:
    rows = table_rows((DOCS / "api.md").read_text(), "errors")
    listed = {(int(row[0]), row[1].strip("`")) for row in rows}
    assert {(status, code) for status, code in CODES.items()} <= listed
    found = doc_tables.source_codes()
    assert {"invalid_json", "retrain_in_progress", "draining"} <= found  # the scan sees them
    assert found - set(CODES.values()) <= {code for _, code in listed}


def test_an_error_code_without_a_row_stops_the_generator(tmp_path: Path) -> None:
    source = tmp_path / "serving"
    shutil.copytree(doc_tables.SERVING, source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "extra.py").write_text('ERROR = dict(code="quota_exceeded")\n')
    with pytest.raises(ValueError, match="quota_exceeded"):
        doc_tables.errors_table(source)


def test_cli_table_lists_every_iris_train_command() -> None:
    rows = table_rows((DOCS / "operations.md").read_text(), "cli")
    commands = {row[0].strip("`").split()[1] for row in rows}
    assert {"run", "promote", "champion", "canary", "drift-report"} <= commands
    assert len(rows) == len(commands)


def test_performance_tables_are_the_committed_results() -> None:
    result = json.loads((doc_tables.RESULTS / "latest.json").read_text())
    oip = json.loads((doc_tables.RESULTS / "oip-latest.json").read_text())
    page = (DOCS / "performance.md").read_text()
    assert result["date"] in page and oip["date"] in page
    for target in result["targets"]:
        assert f"| {target['target']} |" in page and f"**{target['verdict']}**" in page
    # benchmarks/README.md shows the same run (make bench writes both).
    assert doc_tables.results_readme_mismatches() == []


def test_a_benchmark_readme_from_another_run_is_reported(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    current = (ROOT / "benchmarks" / "README.md").read_text()
    readme.write_text(current.replace("| our service | 1 |", "| our service | 2 |", 1))
    assert readme.read_text() != current
    assert doc_tables.results_readme_mismatches(readme) == [f"{readme} <!-- bench:start -->"]


def test_every_relative_link_in_readme_and_docs_leads_to_a_file_and_heading() -> None:
    assert doc_checks.broken_links() == []


def test_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-heading-with-code) [ok](#title) [web](https://example.com/x)\n"
        "# Title\n[gone](missing.md) [bad anchor](other.md#nowhere)\n"
        "```\n[inside code](ignored.md)\n```\n"
    )
    broken = doc_checks.broken_links([page])
    assert [re.search(r"\((.*?)\)", b).group(1) for b in broken] == [
        "missing.md",
        "other.md#nowhere",
    ]


def test_every_iris_variable_named_in_the_docs_is_a_setting(tmp_path: Path) -> None:
    assert doc_checks.unknown_variables() == []
    page = tmp_path / "page.md"
    page.write_text("Set `IRIS_GRPC_PORT` and `IRIS_MADE_UP_S`.\n")
    assert doc_checks.unknown_variables([page]) == [f"{page}: IRIS_MADE_UP_S"]


def test_readme_is_short_and_its_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 5000, "README is for the first ten minutes: move it to docs/"
    two = readme.split("## Two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in two.splitlines()] == [["make", "run"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test", "conformance", "docs"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    assert "make conformance" in readme
