"""Docs that are generated must be current."""

from pathlib import Path

from laion_spark.tables_doc import tables_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_tables_doc_is_current():
    current = (ROOT / "docs" / "tables.md").read_text()
    assert current.strip() == tables_markdown().strip(), (
        "docs/tables.md is stale: python -m laion_spark.tables_doc > docs/tables.md"
    )


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
