"""What every command shares: `--conf`/`--set`, the config they load, the session they open."""

from __future__ import annotations

import argparse
import logging
import sys

from laion_spark.config import Config, load_config


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", default="local", help="config name in conf/ or a YAML path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set download.threads=64 (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show debug-level logging")


def config(args: argparse.Namespace) -> Config:
    extra = {"workdir": args.workdir} if getattr(args, "workdir", None) else None
    return load_config(args.conf, args.overrides, extra=extra)


def session(cfg: Config, lazy: bool = False):
    """(spark, tables) for the config: the active session on a cluster, else a local one.

    lazy: the session starts on first use, so a command whose work runs in this process
    (a small export of local tables) never starts a JVM."""
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    spark = LazySpark(cfg) if lazy else get_spark(cfg)
    return spark, Tables(spark, cfg)


class LazySpark:
    """A SparkSession that starts when an attribute is first asked for."""

    def __init__(self, cfg: Config):
        self._cfg = cfg
        self._spark = None

    @property
    def started(self) -> bool:
        return self._spark is not None

    def __getattr__(self, name: str):
        if self._spark is None:
            from laion_spark.session import get_spark

            self._spark = get_spark(self._cfg)
        return getattr(self._spark, name)


def exit_code(result) -> int:
    """Print a stage's summary; 1, with the reason on stderr, when it could not do its job."""
    from laion_spark.stage import print_summary

    print_summary([result])
    if result.error:
        print(f"laion-spark: stage {result.stage} failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def setup_logging(verbose: bool = False) -> None:
    """The library speaks through `logging`; the CLI shows its INFO lines as plain text, a
    progress line per stage, and (unless --verbose) no Spark warnings or progress bars."""
    from laion_spark import progress, session

    session.quiet_console(not verbose)
    progress.ENABLED = True
    logger = logging.getLogger("laion_spark")
    if not any(getattr(h, "_laion_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[laion_spark] %(message)s"))
        handler._laion_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
