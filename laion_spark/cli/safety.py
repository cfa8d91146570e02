"""Commands of a safety team: takedown, train-head."""

from __future__ import annotations

import argparse
import json

from laion_spark.cli.options import add_common, config, session


def cmd_takedown(args: argparse.Namespace) -> int:
    from laion_spark.takedown.request import takedown

    cfg = config(args)
    spark, tables = session(cfg)
    values = list(args.values)
    if args.file:
        with open(args.file) as f:
            values += [line.strip() for line in f if line.strip()]
    removed = takedown(spark, cfg, tables, args.kind, values, reason=args.reason)
    for table, n in sorted(removed.items()):
        print(f"{table:<16} {n} rows removed")
    return 0


def cmd_train_head(args: argparse.Namespace) -> int:
    from laion_spark.score.train import train_head

    cfg = config(args)
    spark, tables = session(cfg)
    metrics = train_head(spark, cfg, tables, args.kind, args.labels, args.out)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def register(sub) -> None:
    from laion_spark.takedown.rules import KINDS

    p = sub.add_parser("takedown", help="remove samples from every table and index, for good")
    add_common(p)
    p.add_argument("--kind", required=True, choices=list(KINDS))
    p.add_argument("values", nargs="*")
    p.add_argument("--file", help="one value per line")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_takedown)

    p = sub.add_parser(
        "train-head", help="train a score head (nsfw, watermark, aesthetic, toxicity)"
    )
    add_common(p)
    p.add_argument("kind", choices=["nsfw", "watermark", "aesthetic", "toxicity"])
    p.add_argument("--labels", required=True, help="Delta/parquet path or table of sample_id,label")
    p.add_argument("--out", required=True, help="where to write the head's weights")
    p.set_defaults(func=cmd_train_head)
