"""The parser (one sub-command group per module) and the entry points `main` / `job_main`."""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys

from laion_spark.cli import audit, dpo, io, models, pipeline, query, safety
from laion_spark.extras import MissingExtra
from laion_spark.settings import ConfigError
from laion_spark.stage import StageOptionError

# command groups in help order; each module's `register(sub)` adds its commands
GROUPS = (pipeline, query, safety, models, audit, io, dpo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laion-spark",
        description="Build LAION-style image-text datasets with Spark and Delta Lake.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from laion_spark.cli.options import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"laion-spark: config error: {e}", file=sys.stderr)
        return 2
    except (StageOptionError, MissingExtra) as e:
        print(f"laion-spark: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failed stage or command: say what, exit 1; -v shows where
        if getattr(args, "verbose", False):
            raise
        broken = unreadable_data_file(e)
        if broken:  # one precise line: which file of which table, and how to repair it
            print(f"laion-spark: {args.command} failed: {broken}", file=sys.stderr)
            return 1
        print(f"laion-spark: {args.command} failed: {type(e).__name__}: {e}", file=sys.stderr)
        print("laion-spark: run again with -v for the traceback", file=sys.stderr)
        return 1


# Spark's error for a data file a task could not read: its kind (NO_HINT: corrupt or
# truncated, FILE_NOT_EXIST: deleted, ...) and the file
_FAILED_READ = re.compile(r"\[FAILED_READ_FILE\.(\w+)\][^\n]*?reading file (\S+?)\.?(?:\s|$)")
_CAUSE = re.compile(r"Caused by: ([\w.$]+(?:Exception|Error)): ([^\n]*)")


def unreadable_data_file(e: BaseException) -> str | None:
    """One line for an error that is a Delta table's data file being unreadable (corrupt,
    truncated or deleted under the table): the table, the file, why, and how to repair it;
    None for any other error."""
    text = str(e)
    m = _FAILED_READ.search(text)
    if not m:
        return None
    kind, path = m.group(1), m.group(2)
    if path.startswith("file:/"):  # Hadoop's name for a local file: show the plain path
        path = "/" + path.removeprefix("file:").lstrip("/")
    table_dir = _delta_table_dir(path)
    cause = _CAUSE.search(text)
    why = (
        "is missing (deleted under the table)"
        if kind == "FILE_NOT_EXIST"
        else "is corrupt or truncated"
    )
    if cause and kind != "FILE_NOT_EXIST":
        why += f" ({cause.group(1).rsplit('.', 1)[-1]}: {cause.group(2).strip()[:160]})"
    if table_dir is None:
        return f"data file {path} {why}; restore it from a backup and run again"
    name = posixpath.basename(table_dir.rstrip("/"))
    added = _version_that_added(table_dir, path)
    target = f"delta.`{table_dir}`"
    if added is None or added == 0:
        rollback = (
            f"or roll the table back in Spark SQL (DESCRIBE HISTORY {target} lists the "
            f"versions; RESTORE TABLE {target} TO VERSION AS OF <version>)"
        )
    else:
        rollback = (
            f"or roll the table back to before version {added} wrote it, in Spark SQL: "
            f"RESTORE TABLE {target} TO VERSION AS OF {added - 1}"
        )
    return (
        f"table {name}: data file {path} {why}; repair: put the file back from a backup, "
        f"{rollback}, then run the stages again (they redo the rows the rollback removed)"
    )


def _delta_table_dir(path: str) -> str | None:
    """The Delta table folder holding data file `path` (the nearest parent with _delta_log)."""
    from laion_spark import storage

    d = posixpath.dirname(path)
    for _ in range(6):  # partition folders col=value lie between the table and the file
        try:
            if storage.exists(storage.join(d, "_delta_log")):
                return d.removeprefix("file:")
        except Exception:  # noqa: BLE001 - an unreachable store: say what we know
            return None
        parent = posixpath.dirname(d)
        if parent == d:
            return None
        d = parent
    return None


def _version_that_added(table_dir: str, path: str) -> int | None:
    """The table version whose commit added data file `path` (None when not found, e.g. the
    commit was compacted into a checkpoint)."""
    from laion_spark import storage

    fs, log_dir = storage.fs_path(storage.join(table_dir, "_delta_log"))
    base = posixpath.basename(path)
    try:
        commits = sorted(p for p in fs.ls(log_dir, detail=False) if p.endswith(".json"))
        for commit in reversed(commits):
            for line in fs.cat_file(commit).decode().splitlines():
                action = json.loads(line).get("add")
                if action and posixpath.basename(action.get("path", "")) == base:
                    return int(posixpath.basename(commit).split(".")[0])
    except Exception:  # noqa: BLE001 - the hint is optional; the file name is the point
        return None
    return None


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """spark-submit jobs/<stage>.py [options]: exactly `laion-spark run <stage> [options]`."""
    return main(["run", stage, *(sys.argv[1:] if argv is None else argv)])
