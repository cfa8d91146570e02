"""Commands that describe a dataset: report (page, dataset card and numbers)."""

from __future__ import annotations

import argparse
import sys

from laion_spark.cli.options import add_common, config, session


def cmd_report(args: argparse.Namespace) -> int:
    from laion_spark.extras import require

    require("report", "matplotlib")  # before Spark starts
    from laion_spark.report.build import ReportError, build_report
    from laion_spark.report.snapshot import AsOfError

    cfg = config(args)
    spark, tables = session(cfg, lazy=True)  # an up-to-date report needs no JVM
    try:
        result = build_report(
            spark,
            cfg,
            tables,
            out=args.out,
            subset=args.subset,
            compare=args.compare,
            as_of=args.as_of,
            probes=False if args.no_probes else None,
            reuse=not args.rebuild,
        )
    except (ReportError, AsOfError, FileNotFoundError) as e:
        print(f"laion-spark report: {e}", file=sys.stderr)
        return 2
    pop = result.report["population"]
    print(
        f"report: {pop['rows']} samples, NSFW {pop['nsfw_share']}, toxic {pop['toxic_share']} "
        f"({result.seconds:.1f}s)"
    )
    if result.reused:
        print(
            f"  up to date: no table it reads changed since it was made at "
            f"{result.report['generated']['at']} (--rebuild makes a new one)"
        )
    for name in ("index.html", "README.md", "report.json"):
        print(f"  {result.files[name]}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="dataset report: index.html, a dataset card README.md, report.json"
    )
    add_common(p)
    p.add_argument("--out", help="folder to write (default: <report.root>/<UTC time>)")
    p.add_argument("--subset", help="describe this subset instead of every candidate")
    p.add_argument(
        "--compare",
        metavar="OTHER",
        help="a second subset, or other table versions (same forms as --as-of), side by side",
    )
    p.add_argument(
        "--as-of",
        dest="as_of",
        metavar="SPEC",
        help="read the tables as they were: a timestamp, a version N, table=N,..., or a "
        "report.json (its versions)",
    )
    p.add_argument("--no-probes", action="store_true", help="skip the keyword probes")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="make a new report even when the latest one was made from the same table "
        "versions, request and config (by default that one is reused)",
    )
    p.set_defaults(func=cmd_report)
