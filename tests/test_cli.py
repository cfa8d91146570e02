"""The command line: one parser for CLI and jobs, options checked per stage, exit codes,
progress lines. Commands that need no Spark run as real subprocesses."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "laion_spark.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_every_command_is_registered_and_serve_help_works():
    from laion_spark.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {
        "demo",
        "run",
        "pipeline",
        "sql",
        "tables",
        "status",
        "serve",
        "search",
        "takedown",
        "merge-index",
        "import",
        "export",
    } <= set(sub.choices)
    out = cli("serve", "--help")
    assert out.returncode == 0 and "--port" in out.stdout


def test_an_option_a_stage_does_not_take_fails_before_spark_starts():
    out = cli("run", "extract", "--retry-failed")
    assert out.returncode == 2
    assert (
        "stage extract does not take --retry-failed (it takes --inputs, --reprocess)" in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_jobs_use_the_same_parser(tmp_path):
    job = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "merge_index.py"), "--inputs", "x.wat.gz"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert job.returncode == 2 and "stage merge_index does not take --inputs" in job.stderr


def test_bad_config_exits_2_naming_the_key():
    out = cli("status", "--set", "download.treads=3")
    assert out.returncode == 2 and "download.treads" in out.stderr


def test_renamed_stage_still_runs_through_its_replacement():
    from laion_spark.stage import resolve

    name, options = resolve("clip_filter", {})
    assert (name, options) == ("curate", {"filters": ["clip_filter"]})


@pytest.mark.parametrize("tty", [False, True])
def test_progress_line_follows_spark_jobs(spark, tty):
    from laion_spark.progress import StageProgress

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    with StageProgress(spark, "embed", stream=stream, interval=0.05, log_every=0) as p:
        StageProgress.rows(1234)
        spark.range(0, 200_000, numPartitions=4).selectExpr("sum(id * id)").collect()
        spark.range(0, 200_000, numPartitions=4).selectExpr("sum(id * 2)").collect()
    shown = stream.getvalue()
    assert p.lines and all(line.startswith("[laion_spark] embed · 1234 rows") for line in p.lines)
    assert any("Spark job" in line for line in p.lines)
    if tty:  # redrawn in place, and cleared for the stage's summary line
        assert shown.startswith("\r\033[K") and shown.endswith("\r\033[K")
    else:
        assert "\r" not in shown and shown.endswith("\n")
