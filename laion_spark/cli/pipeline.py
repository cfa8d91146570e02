"""Commands that run stages: demo, run, pipeline, merge-index."""

from __future__ import annotations

import argparse

from laion_spark.cli.options import add_common, config, exit_code, session


def cmd_run(args: argparse.Namespace) -> int:
    from laion_spark.stage import resolve, run_stage

    cfg = config(args)
    options: dict = {}
    if args.inputs is not None:
        options["inputs"] = args.inputs
    if args.retry_failed:
        options["retry_failed"] = True
    if args.limit is not None:
        options["limit"] = args.limit
    if args.force:
        options["force"] = True
    name, options = resolve(args.stage, options)  # a wrong option fails before Spark starts
    from laion_spark.status import nothing_to_do

    idle = nothing_to_do(cfg, name, options)
    if idle is not None:  # found from the Delta tables: no JVM started for a no-op
        print(f"{name}: nothing to do ({idle}; checked without starting Spark)")
        return 0
    # started on first use: a stage that runs in this process (score's local path) needs none
    spark, tables = session(cfg, lazy=True)
    return exit_code(run_stage(name, spark, cfg, tables, **options))


def cmd_pipeline(args: argparse.Namespace) -> int:
    from laion_spark.pipeline import run_pipeline

    cfg = config(args)
    spark, tables = session(cfg)
    results = run_pipeline(spark, cfg, tables, stages=args.stages)
    return 1 if any(r.error for r in results) else 0


def cmd_merge_index(args: argparse.Namespace) -> int:
    args.stage, args.inputs, args.retry_failed, args.limit = "merge_index", None, False, None
    return cmd_run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from laion_spark.demo.run import run_demo

    results = run_demo(config(args), pages=args.pages)
    return 1 if any(r.error for r in results) else 0


def register(sub) -> None:
    from laion_spark.stage import RENAMED, STAGES

    p = sub.add_parser("demo", help="run the whole pipeline on a generated crawl, locally")
    add_common(p)
    p.add_argument("--workdir", help="where the demo's tables and files go (default from conf)")
    p.add_argument("--pages", type=int, default=200, help="number of generated web pages")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run one stage")
    add_common(p)
    p.add_argument("stage", choices=[*STAGES, *RENAMED])
    # each option belongs to some stages; a stage refuses one it does not take, by name
    p.add_argument("--inputs", nargs="*", help="extract: WAT/WARC files or listings")
    p.add_argument("--retry-failed", action="store_true", help="download: retry retryable failures")
    p.add_argument("--limit", type=int, help="download/embed/score: at most N samples this run")
    p.add_argument(
        "--force",
        action="store_true",
        help="merge_index, curate, dpo_select: redo even if up to date",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("pipeline", help="run every stage in order")
    add_common(p)
    p.add_argument("--stages", nargs="*", choices=list(STAGES), help="subset of stages, in order")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("merge-index", help="merge index shards into the serving index")
    add_common(p)
    p.add_argument("--force", action="store_true", help="merge even if the index is up to date")
    p.set_defaults(func=cmd_merge_index)
