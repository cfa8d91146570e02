"""Commands that move data in and out: import, export, reshard."""

from __future__ import annotations

import argparse
import sys

from laion_spark.cli.options import add_common, config, exit_code, session


def _finish(cfg, tables, result, options: dict) -> int:
    """Keep the run in `runs`, print its summary; exit 1 when it could not do its job."""
    from datetime import UTC, datetime

    from laion_spark.stage import record_run

    record_run(tables, cfg, result, options, datetime.now(UTC))
    return exit_code(result)


def cmd_import(args: argparse.Namespace) -> int:
    from laion_spark.stage import print_summary

    cfg = config(args)
    spark, tables = session(cfg)
    if args.flavor == "webdataset":
        from laion_spark.export.importer import import_webdataset

        result = import_webdataset(spark, cfg, tables, args.path)
        return _finish(cfg, tables, result, {"path": args.path, "flavor": args.flavor})
    from laion_spark.extract.importer import import_metadata

    print_summary([import_metadata(spark, cfg, tables, args.path, flavor=args.flavor)])
    return 0


def _export_settings(args: argparse.Namespace) -> list[str]:
    """Command-line options as config overrides (export.*), so the manifest records them."""
    out = []
    for flag, key in (
        ("shard_samples", "shard_samples"),
        ("shard_bytes", "shard_bytes"),
        ("repeats", "repeats"),
        ("shuffle_seed", "shuffle_seed"),
        ("model_id", "model_id"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"export.{key}={value}")
    return out


def _export_dpo(args: argparse.Namespace) -> int:
    """`export --format dpo --to DIR`: the mined preference pairs (dpo_pairs) as TRL's
    vision DPO dataset; --subset names the pair selection (default dpo.select.name)."""
    from laion_spark.dpo.export import export_dpo
    from laion_spark.extras import require

    require("dpo", "datasets")
    if not args.to:
        print("laion-spark export: say where: --to DIR_OR_URI", file=sys.stderr)
        return 2
    cfg = config(args)
    spark, tables = session(cfg)
    selection = args.subset or args.subset_name
    n = export_dpo(spark, cfg, tables, args.to, selection=selection)
    print(f"exported {n} preference pairs in TRL's vision DPO format to {args.to}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "dpo":
        return _export_dpo(args)
    subset = args.subset or args.subset_name
    if not subset:
        print("laion-spark export: name the subset: --subset NAME", file=sys.stderr)
        return 2
    if args.out:  # the earlier single-file form: export SUBSET --out PATH --format uids|parquet
        return _export_single(args, subset)
    if not args.to:
        print("laion-spark export: say where: --to DIR_OR_URI", file=sys.stderr)
        return 2
    from laion_spark.export.stage import run

    args.overrides = [*args.overrides, *_export_settings(args)]
    cfg = config(args)
    spark, tables = session(cfg, lazy=True)  # a small local export needs no JVM
    fmt = args.format or cfg.export.format
    result = run(spark, cfg, tables, subset=subset, to=args.to, fmt=fmt, force=args.force)
    code = _finish(cfg, tables, result, {"subset": subset, "format": fmt, "to": args.to})
    if not result.error:
        print(
            f"exported subset {subset!r} as {fmt}: {result.rows_out} samples in "
            f"{result.notes.get('shards')} shard(s) under {result.notes.get('target')}"
        )
    return code


def _export_single(args: argparse.Namespace, subset: str) -> int:
    from laion_spark.export.subset import export_parquet, export_uids

    fmt = args.format or "parquet"
    if fmt not in ("uids", "parquet"):
        print(
            f"laion-spark export: --out writes one file (uids) or folder (parquet); for {fmt} "
            f"shards use: export --subset {subset} --format {fmt} --to DIR",
            file=sys.stderr,
        )
        return 2
    print(
        "note: `export SUBSET --out PATH` writes one file as before; "
        f"`export --subset {subset} --format {fmt} --to DIR` writes shards with a manifest",
        file=sys.stderr,
    )
    cfg = config(args)
    _, tables = session(cfg)
    if fmt == "uids":
        n = export_uids(tables, subset, args.out, expand_repeats=args.expand_repeats)
    else:
        n = export_parquet(tables, subset, args.out)
    print(f"exported {n} rows of subset {subset!r} to {args.out}")
    return 0


def cmd_reshard(args: argparse.Namespace) -> int:
    from laion_spark.export.reshard import reshard

    args.overrides = [*args.overrides, *_export_settings(args)]
    cfg = config(args)
    spark, tables = session(cfg)
    result = reshard(spark, cfg, tables, args.uids, args.pool, args.to, force=args.force)
    options = {"uids": args.uids, "pool": args.pool, "to": args.to}
    return _finish(cfg, tables, result, options)


def _shard_options(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-samples", type=int, help="samples per shard (export.shard_samples)")
    size.add_argument("--shard-bytes", type=int, help="about this many bytes per shard instead")
    p.add_argument("--shuffle-seed", type=int, help="shuffle samples across shards with this seed")
    p.add_argument("--force", action="store_true", help="rewrite even if the target is up to date")


def register(sub) -> None:
    from laion_spark.export.formats import FORMATS

    p = sub.add_parser(
        "import",
        help="build candidates from LAION/DataComp metadata parquet, or candidates + images "
        "from WebDataset shards (img2dataset / DataComp pools)",
    )
    add_common(p)
    p.add_argument("path", help="metadata parquet, or a folder / glob of .tar shards")
    p.add_argument("--flavor", choices=["laion", "datacomp", "webdataset"], default="laion")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "export",
        help="export a subset as shards: webdataset, laion (embeddings release), parquet, uids",
    )
    add_common(p)
    p.add_argument("subset_name", nargs="?", metavar="SUBSET", help=argparse.SUPPRESS)
    p.add_argument("--subset", help="the subset to export (a name in the subsets table)")
    p.add_argument(
        "--format",
        choices=[*FORMATS, "dpo"],
        help="default: export.format; dpo = the mined preference pairs (dpo_pairs) for TRL",
    )
    p.add_argument("--to", help="target folder: local path, s3://..., dbfs:/...")
    _shard_options(p)
    p.add_argument(
        "--repeats",
        choices=["expand", "column"],
        help="a sampler's repeats: write a sample repeat times, or once with a repeat column",
    )
    p.add_argument("--model-id", help="embeddings model for similarity / the laion format")
    # the earlier single-file form, kept working
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--expand-repeats", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "reshard", help="write the samples of a WebDataset pool listed in a uid .npy as new shards"
    )
    add_common(p)
    p.add_argument("--uids", required=True, help="DataComp-format uid array (u8,u8 .npy)")
    p.add_argument("--pool", required=True, help="folder / glob of the pool's .tar shards")
    p.add_argument("--to", required=True, help="target folder: local path, s3://..., dbfs:/...")
    _shard_options(p)
    p.set_defaults(func=cmd_reshard)
