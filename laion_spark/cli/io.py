"""Commands that move data in and out: import, export."""

from __future__ import annotations

import argparse

from laion_spark.cli.options import add_common, config, session


def cmd_import(args: argparse.Namespace) -> int:
    from laion_spark.extract.importer import import_metadata
    from laion_spark.stage import print_summary

    cfg = config(args)
    spark, tables = session(cfg)
    print_summary([import_metadata(spark, cfg, tables, args.path, flavor=args.flavor)])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from laion_spark.export.subset import export_parquet, export_uids

    cfg = config(args)
    _, tables = session(cfg)
    if args.format == "uids":
        n = export_uids(tables, args.subset, args.out, expand_repeats=args.expand_repeats)
    else:
        n = export_parquet(tables, args.subset, args.out)
    print(f"exported {n} rows of subset {args.subset!r} to {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("import", help="build candidates from LAION or DataComp metadata parquet")
    add_common(p)
    p.add_argument("path")
    p.add_argument("--flavor", choices=["laion", "datacomp"], default="laion")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export a subset as DataComp uids (.npy) or parquet")
    add_common(p)
    p.add_argument("subset")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["uids", "parquet"], default="parquet")
    p.add_argument("--expand-repeats", action="store_true")
    p.set_defaults(func=cmd_export)
