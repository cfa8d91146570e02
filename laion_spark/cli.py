"""`laion-spark` command line. Every command takes `--conf NAME|PATH` and `--set key=value`.

    laion-spark demo [--workdir DIR]       generated crawl -> every stage -> search, end to end
    laion-spark run STAGE                  one stage (extract, download, embed, score, curate, index)
    laion-spark pipeline                   every stage in order
    laion-spark sql "SELECT ..."           SQL over the Delta tables (each table is a view)
    laion-spark tables                     tables with row counts and Delta versions
    laion-spark merge-index | search | serve | takedown | train-head | import | export
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from laion_spark.config import Config, load_config
from laion_spark.settings import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", default="local", help="config name in conf/ or a YAML path")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set download.threads=64 (repeatable)",
    )


def _cfg(args: argparse.Namespace) -> Config:
    extra = {"workdir": args.workdir} if getattr(args, "workdir", None) else None
    return load_config(args.conf, args.overrides, extra=extra)


def _session(cfg: Config):
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    spark = get_spark(cfg)
    return spark, Tables(spark, cfg)


def cmd_run(args) -> int:
    from laion_spark.stage import print_summary, run_stage

    cfg = _cfg(args)
    spark, tables = _session(cfg)
    opts = {"retry_failed": True} if getattr(args, "retry_failed", False) else {}
    if args.stage == "extract" and args.inputs:
        opts["inputs"] = args.inputs
    result = run_stage(args.stage, spark, cfg, tables, **opts)
    print_summary([result])
    if result.error:
        print(f"[laion_spark] {args.stage} failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def cmd_pipeline(args) -> int:
    from laion_spark.pipeline import run_pipeline

    cfg = _cfg(args)
    spark, tables = _session(cfg)
    run_pipeline(spark, cfg, tables, stages=args.stages)
    return 0


def cmd_sql(args) -> int:
    cfg = _cfg(args)
    spark, tables = _session(cfg)
    tables.register_views()
    df = spark.sql(args.query)
    if args.output:
        df.write.mode("overwrite").parquet(args.output)
        print(f"wrote {args.output}")
    else:
        df.show(args.limit, truncate=args.truncate)
    return 0


def cmd_tables(args) -> int:
    cfg = _cfg(args)
    _, tables = _session(cfg)
    rows = tables.counts()
    if not rows:
        print(f"no tables yet under {tables.root}")
    print(f"{'table':<16} {'rows':>10} {'version':>8}  location")
    for r in rows:
        print(f"{r['table']:<16} {r['rows']:>10} {r['version']:>8}  {r['location']}")
    return 0


def cmd_demo(args) -> int:
    from laion_spark.demo.run import run_demo

    cfg = _cfg(args)
    run_demo(cfg, pages=args.pages)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from laion_spark.stage import STAGES

    parser = argparse.ArgumentParser(prog="laion-spark", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole pipeline on a generated crawl, locally")
    _common(p)
    p.add_argument("--workdir", help="where the demo's tables and files go (default from conf)")
    p.add_argument("--pages", type=int, default=200, help="number of generated web pages")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run one stage")
    _common(p)
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("--inputs", nargs="*", help="extract: WAT/WARC files or listings")
    p.add_argument("--retry-failed", action="store_true", help="download: retry retryable failures")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("pipeline", help="run every stage in order")
    _common(p)
    p.add_argument("--stages", nargs="*", choices=list(STAGES), help="subset of stages, in order")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("sql", help="SQL over the Delta tables; each table is a view by its name")
    _common(p)
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--truncate", type=int, default=60, help="truncate cells to N chars (0: never)")
    p.add_argument("--output", help="write the result as parquet here instead of printing")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("tables", help="list tables with row counts and Delta versions")
    _common(p)
    p.set_defaults(func=cmd_tables)

    for register in _EXTRA_COMMANDS:
        register(sub, _common)
    return parser


# Stage-specific commands register themselves here (laion_spark.cli_extra).
_EXTRA_COMMANDS: list[Callable] = []


def main(argv: list[str] | None = None) -> int:
    from laion_spark import cli_extra  # noqa: F401  (registers stage commands)

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"laion-spark: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
