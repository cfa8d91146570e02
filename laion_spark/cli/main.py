"""The parser (one sub-command group per module) and the entry points `main` / `job_main`."""

from __future__ import annotations

import argparse
import sys

from laion_spark.cli import io, models, pipeline, query, safety
from laion_spark.extras import MissingExtra
from laion_spark.settings import ConfigError
from laion_spark.stage import StageOptionError

# command groups in help order; each module's `register(sub)` adds its commands
GROUPS = (pipeline, query, safety, models, io)


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
        print(f"laion-spark: {args.command} failed: {type(e).__name__}: {e}", file=sys.stderr)
        print("laion-spark: run again with -v for the traceback", file=sys.stderr)
        return 1


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """spark-submit jobs/<stage>.py [options]: exactly `laion-spark run <stage> [options]`."""
    return main(["run", stage, *(sys.argv[1:] if argv is None else argv)])
