"""CLIP-DPO commands: fill the pool, import responses, export the pairs for TRL.

The stages themselves run like any other: `laion-spark run dpo_generate|dpo_score|dpo_select`.
"""

from __future__ import annotations

import argparse

from laion_spark.cli.options import add_common, config, session


def cmd_import_sft(args: argparse.Namespace) -> int:
    from laion_spark.dpo.pool import import_sft
    from laion_spark.stage import print_summary

    cfg = config(args)
    spark, tables = session(cfg)
    print_summary([import_sft(spark, cfg, tables, args.path, image_root=args.images)])
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    from laion_spark.dpo.pool import pool_from_images

    cfg = config(args)
    spark, tables = session(cfg)
    added = pool_from_images(spark, cfg, tables)["num_inserted_rows"]
    print(f"added {added} of our images to sft_pool")
    return 0


def cmd_import_responses(args: argparse.Namespace) -> int:
    from laion_spark.dpo.generate import import_responses
    from laion_spark.stage import print_summary

    cfg = config(args)
    spark, tables = session(cfg)
    print_summary([import_responses(spark, cfg, tables, args.path)])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from laion_spark.dpo.export import export_dpo
    from laion_spark.extras import require

    require("dpo", "datasets")
    cfg = config(args)
    spark, tables = session(cfg)
    n = export_dpo(spark, cfg, tables, args.out, selection=args.selection, shards=args.shards)
    print(f"exported {n} preference pairs in TRL's vision DPO format to {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("dpo-import-sft", help="import LLaVA-style SFT JSON into sft_pool")
    add_common(p)
    p.add_argument("path", help='JSON list of {"id", "image", "conversations"} records')
    p.add_argument("--images", help="folder or URI the image paths are relative to")
    p.set_defaults(func=cmd_import_sft)

    p = sub.add_parser("dpo-pool", help="add our downloaded images (with captions) to sft_pool")
    add_common(p)
    p.set_defaults(func=cmd_pool)

    p = sub.add_parser(
        "dpo-import-responses", help="import responses generated elsewhere into dpo_candidates"
    )
    add_common(p)
    p.add_argument("path", help="JSON list, JSONL or parquet with pool_id (or id) and response")
    p.set_defaults(func=cmd_import_responses)

    p = sub.add_parser("dpo-export", help="write dpo_pairs as a TRL vision DPO dataset (parquet)")
    add_common(p)
    p.add_argument("--out", required=True, help="output folder (local, s3://, ...)")
    p.add_argument("--selection", help="which selection (default dpo.select.name)")
    p.add_argument("--shards", type=int, help="number of parquet files")
    p.set_defaults(func=cmd_export)
