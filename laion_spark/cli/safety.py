"""Commands of a safety team: takedown, purge, screen, train-head."""

from __future__ import annotations

import argparse
import json

from laion_spark.cli.options import add_common, config, session


def _print_purge(summary: dict) -> None:
    if not summary.get("purge_id"):
        print("purge: nothing to purge")
        return
    print(
        f"purge {summary['purge_id']}: {len(summary['request_ids'])} request(s), "
        f"{summary['samples']} sample(s), {summary['seconds']:.1f} s, "
        f"{'complete' if summary['complete'] else 'INCOMPLETE'}"
    )
    for table, n in sorted(summary["files_removed"].items()):
        logs = summary["log_files_removed"].get(table)
        extra = f", {logs} log files" if logs is not None else ""
        print(f"  {table:<16} {n if n >= 0 else '?'} data files erased{extra}")
    for line in summary["index_files"] + summary["exports"]:
        print(f"  {line}")
    if summary["notes"]:
        print(f"  notes: {summary['notes']}")


def cmd_takedown(args: argparse.Namespace) -> int:
    from laion_spark.takedown.request import takedown

    cfg = config(args)
    spark, tables = session(cfg)
    values = list(args.values)
    if args.file:
        with open(args.file) as f:
            values += [line.strip() for line in f if line.strip()]
    removed = takedown(
        spark, cfg, tables, args.kind, values, reason=args.reason, max_distance=args.max_distance
    )
    for table, n in sorted(removed.items()):
        print(f"{table:<16} {n} rows removed")
    if args.purge:
        from laion_spark.takedown.purge import purge
        from laion_spark.takedown.request import normalize_value, request_id

        ids = [request_id(args.kind, normalize_value(args.kind, v)) for v in values if v.strip()]
        _print_purge(purge(spark, cfg, tables, ids, retain_hours=args.retain_hours))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from laion_spark.takedown.purge import purge

    cfg = config(args)
    spark, tables = session(cfg)
    _print_purge(purge(spark, cfg, tables, args.request_ids or None, args.retain_hours))
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    from laion_spark.takedown.pdq import parse_hash_list
    from laion_spark.takedown.request import takedown

    cfg = config(args)
    with open(args.hash_list) as f:
        hashes = parse_hash_list(f)
    if not hashes:
        print(f"{args.hash_list}: no hashes")
        return 1
    spark, tables = session(cfg)
    removed = takedown(
        spark,
        cfg,
        tables,
        "pdq",
        hashes,
        reason=args.reason or f"hash list {args.hash_list}",
        max_distance=args.max_distance,
        purge=args.purge,
    )
    print(f"screened against {len(hashes)} PDQ hashes: {removed.get('images', 0)} images matched")
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
    p.add_argument(
        "--max-distance",
        type=int,
        help="pdq: Hamming distance that still matches (default takedown.pdq_max_distance, 31)",
    )
    p.add_argument(
        "--purge", action="store_true", help="then erase the bytes on disk (see `purge`)"
    )
    p.add_argument(
        "--retain-hours",
        type=float,
        help="with --purge: VACUUM retention (default takedown.purge_retain_hours, 0)",
    )
    p.set_defaults(func=cmd_takedown)

    p = sub.add_parser(
        "purge",
        help="physically erase taken-down samples: Delta files and old log versions, "
        "index shards and merged files, exports (default: every request not yet purged)",
    )
    add_common(p)
    p.add_argument("request_ids", nargs="*", help="takedown request ids (default: unpurged)")
    p.add_argument(
        "--retain-hours",
        type=float,
        help="VACUUM retention (default takedown.purge_retain_hours, 0: erase now; time "
        "travel and readers of older snapshots lose their files)",
    )
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser(
        "screen", help="match stored images against a PDQ hash list and take matches down"
    )
    add_common(p)
    p.add_argument("--hash-list", required=True, help="file: one 64-hex PDQ hash per line")
    p.add_argument("--max-distance", type=int, help="default takedown.pdq_max_distance (31)")
    p.add_argument("--reason", default="")
    p.add_argument("--purge", action="store_true", help="then erase the matches' bytes")
    p.set_defaults(func=cmd_screen)

    p = sub.add_parser(
        "train-head", help="train a score head (nsfw, watermark, aesthetic, toxicity)"
    )
    add_common(p)
    p.add_argument("kind", choices=["nsfw", "watermark", "aesthetic", "toxicity"])
    p.add_argument("--labels", required=True, help="Delta/parquet path or table of sample_id,label")
    p.add_argument("--out", required=True, help="where to write the head's weights")
    p.set_defaults(func=cmd_train_head)
