"""Stage-specific commands of `laion-spark`: merge-index, search, serve, takedown,
train-head, import, export. Each is a thin wrapper over a library function."""

from __future__ import annotations

import json

from laion_spark import cli


def _register(fn):
    cli._EXTRA_COMMANDS.append(fn)
    return fn


@_register
def _merge_index(sub, common):
    def run(args):
        from laion_spark.index.merge import merge_index
        from laion_spark.stage import print_summary

        cfg = cli._cfg(args)
        spark, tables = cli._session(cfg)
        print_summary([merge_index(spark, cfg, tables)])
        return 0

    p = sub.add_parser("merge-index", help="merge index shards into the serving index")
    common(p)
    p.set_defaults(func=run)


@_register
def _search(sub, common):
    def run(args):
        from laion_spark.index.search import Searcher

        cfg = cli._cfg(args)
        searcher = Searcher.open(None, cfg)
        query: str | bytes = args.query
        if args.image:
            with open(args.query, "rb") as f:
                query = f.read()
        hits = searcher.search(query, k=args.k, safe_mode=not args.unsafe, language=args.language)
        if args.json:
            print(json.dumps(hits, indent=2, default=str))
        for h in hits if not args.json else []:
            print(f"{h.get('score', 0):.3f}  {str(h.get('caption'))[:70]:70}  {h.get('url')}")
        return 0

    p = sub.add_parser("search", help="kNN search of the merged index by text or image")
    common(p)
    p.add_argument("query", help="text, or an image path with --image")
    p.add_argument("--image", action="store_true", help="QUERY is an image file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--language")
    p.add_argument("--unsafe", action="store_true", help="include punsafe > threshold results")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


@_register
def _serve(sub, common):
    def run(args):
        from laion_spark.serve.app import serve

        cfg = cli._cfg(args)
        serve(cfg, host=args.host or cfg.serve.host, port=args.port or cfg.serve.port)
        return 0

    p = sub.add_parser("serve", help="search web page + JSON API (default 127.0.0.1:8765)")
    common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=run)


@_register
def _takedown(sub, common):
    def run(args):
        from laion_spark.safety.takedown import takedown

        cfg = cli._cfg(args)
        spark, tables = cli._session(cfg)
        values = list(args.values)
        if args.file:
            with open(args.file) as f:
                values += [line.strip() for line in f if line.strip()]
        removed = takedown(spark, cfg, tables, args.kind, values, reason=args.reason)
        for table, n in sorted(removed.items()):
            print(f"{table:<16} {n} rows removed")
        return 0

    p = sub.add_parser("takedown", help="remove samples from every table and index, for good")
    common(p)
    p.add_argument("--kind", required=True, choices=["url", "domain", "sha256", "md5", "sample_id"])
    p.add_argument("values", nargs="*")
    p.add_argument("--file", help="one value per line")
    p.add_argument("--reason", default="")
    p.set_defaults(func=run)


@_register
def _train_head(sub, common):
    def run(args):
        from laion_spark.safety.train import train_head

        cfg = cli._cfg(args)
        spark, tables = cli._session(cfg)
        metrics = train_head(spark, cfg, tables, args.kind, args.labels, args.out)
        print(json.dumps(metrics, indent=2, default=str))
        return 0

    p = sub.add_parser("train-head", help="train a score head (nsfw, watermark, aesthetic, toxicity)")
    common(p)
    p.add_argument("kind", choices=["nsfw", "watermark", "aesthetic", "toxicity"])
    p.add_argument("--labels", required=True, help="Delta/parquet path or table of sample_id,label")
    p.add_argument("--out", required=True, help="where to write the head's weights")
    p.set_defaults(func=run)


@_register
def _import(sub, common):
    def run(args):
        from laion_spark.extract.importer import import_metadata
        from laion_spark.stage import print_summary

        cfg = cli._cfg(args)
        spark, tables = cli._session(cfg)
        print_summary([import_metadata(spark, cfg, tables, args.path, flavor=args.flavor)])
        return 0

    p = sub.add_parser("import", help="build candidates from LAION or DataComp metadata parquet")
    common(p)
    p.add_argument("path")
    p.add_argument("--flavor", choices=["laion", "datacomp"], default="laion")
    p.set_defaults(func=run)


@_register
def _export(sub, common):
    def run(args):
        from laion_spark.export.subset import export_parquet, export_uids

        cfg = cli._cfg(args)
        _, tables = cli._session(cfg)
        if args.format == "uids":
            n = export_uids(tables, args.subset, args.out, expand_repeats=args.expand_repeats)
        else:
            n = export_parquet(tables, args.subset, args.out)
        print(f"exported {n} rows of subset {args.subset!r} to {args.out}")
        return 0

    p = sub.add_parser("export", help="export a subset as DataComp uids (.npy) or parquet")
    common(p)
    p.add_argument("subset")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["uids", "parquet"], default="parquet")
    p.add_argument("--expand-repeats", action="store_true")
    p.set_defaults(func=run)
