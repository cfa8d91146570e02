"""Shared entry point of the thin spark-submit jobs in jobs/.

    spark-submit jobs/download.py --conf emr --set download.threads=64

The job parses `--conf` and `--set`, gets the session (spark-submit's, or a local one),
and calls the same stage function the CLI calls.
"""

from __future__ import annotations

import argparse
import sys

from laion_spark.config import load_config
from laion_spark.settings import ConfigError


def job_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--conf", default="local", help="config name in conf/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--inputs", nargs="*", help="extract: input WAT/WARC files or listings")
    p.add_argument("--retry-failed", action="store_true", help="download: retry failures")
    return p.parse_args(argv)


def stage_job(stage: str, argv: list[str] | None = None) -> int:
    from laion_spark.session import get_spark
    from laion_spark.stage import print_summary, run_stage
    from laion_spark.tables import Tables

    args = job_args(f"laion_spark {stage} job", argv)
    try:
        cfg = load_config(args.conf, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    spark = get_spark(cfg)
    opts = {}
    if stage == "extract" and args.inputs:
        opts["inputs"] = args.inputs
    if stage == "download" and args.retry_failed:
        opts["retry_failed"] = True
    print_summary([run_stage(stage, spark, cfg, Tables(spark, cfg), **opts)])
    return 0
