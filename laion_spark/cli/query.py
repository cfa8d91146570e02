"""Commands that look at results: sql, tables, search, serve."""

from __future__ import annotations

import argparse
import json

from laion_spark.cli.options import add_common, config, session


def cmd_sql(args: argparse.Namespace) -> int:
    from laion_spark.sql import query, render

    cfg = config(args)
    table = query(cfg, args.query, engine=args.engine)
    if args.output:
        import pyarrow.parquet as pq

        pq.write_table(table, args.output)
        print(f"wrote {table.num_rows} rows to {args.output}")
    else:
        print(render(table, args.limit, args.truncate))
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from laion_spark.sql import last_runs, table_counts

    cfg = config(args)
    rows = table_counts(cfg) if args.engine != "spark" else _spark_counts(cfg)
    if not rows:
        print(f"no tables yet under {cfg.tables_root}")
        return 0
    print(f"{'table':<16} {'rows':>10} {'version':>8}  location")
    for r in rows:
        print(f"{r['table']:<16} {r['rows']:>10} {r['version']:>8}  {r['location']}")
    last = last_runs(cfg, args.engine)
    if last:
        print(
            f"\n{'stage':<12} {'last run (UTC)':<20} {'status':<7} {'in':>8} {'out':>8} {'seconds':>8}"
        )
        for r in last:
            print(
                f"{r['stage']:<12} {r['started_at']:%Y-%m-%d %H:%M:%S} {r['status']:<7} "
                f"{r['rows_in']:>8} {r['rows_out']:>8} {r['seconds']:>8.1f}"
            )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from laion_spark.status import render_status

    print(render_status(config(args)))
    return 0


def _spark_counts(cfg) -> list[dict]:
    _, tables = session(cfg)
    return tables.counts()


def cmd_search(args: argparse.Namespace) -> int:
    from laion_spark.index.search import Searcher

    cfg = config(args)
    searcher = Searcher.open(None, cfg)
    query: str | bytes = args.query
    if args.image:
        with open(args.query, "rb") as f:
            query = f.read()
    hits = searcher.search(
        query,
        k=args.k,
        safe_mode=not args.unsafe,
        language=args.language,
        query_language=args.query_language,
    )
    if args.json:
        print(json.dumps(hits, indent=2, default=str))
        return 0
    for h in hits:
        print(f"{h.get('score', 0):.3f}  {str(h.get('caption'))[:70]:70}  {h.get('url')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from laion_spark.serve.app import serve

    cfg = config(args)
    serve(cfg, host=args.host or cfg.serve.host, port=args.port or cfg.serve.port)
    return 0


def add_engine(p) -> None:
    p.add_argument(
        "--engine",
        choices=["auto", "datafusion", "spark"],
        default="auto",
        help="auto: DataFusion over local tables (no JVM, fast), Spark SQL otherwise",
    )


def register(sub) -> None:
    p = sub.add_parser("sql", help="SQL over the Delta tables; each table is a view by its name")
    add_common(p)
    add_engine(p)
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--truncate", type=int, default=60, help="truncate cells to N chars (0: never)")
    p.add_argument("--output", help="write the result as parquet here instead of printing")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("tables", help="list tables with row counts and Delta versions")
    add_common(p)
    add_engine(p)
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("status", help="rows each stage would process now, and its last run")
    add_common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("search", help="kNN search of the merged index by text or image")
    add_common(p)
    p.add_argument("query", help="text, or an image path with --image")
    p.add_argument("--image", action="store_true", help="QUERY is an image file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--language", help="only results in this language code")
    p.add_argument(
        "--query-language",
        help="language code or group of a text query: picks its text tower (default: detected)",
    )
    p.add_argument("--unsafe", action="store_true", help="include punsafe > threshold results")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="search web page + JSON API (default 127.0.0.1:8765)")
    add_common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)
