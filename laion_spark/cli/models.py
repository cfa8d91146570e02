"""Commands that make models: train-text-tower."""

from __future__ import annotations

import argparse
import json

from laion_spark.cli.options import add_common, config


def cmd_train_text_tower(args: argparse.Namespace) -> int:
    from laion_spark.extras import require

    require("multilingual", "transformers", "tokenizers")
    from laion_spark.embed.distill import calibrate_on_generated, read_pairs, train_text_tower
    from laion_spark.models.clip import load_clip
    from laion_spark.models.text_tower import SIDECAR

    cfg = config(args)
    spark = None
    if not _is_path(args.pairs):  # a catalog table needs the session; files do not
        from laion_spark.cli.options import session

        spark, _ = session(cfg)
    english, texts = read_pairs(args.pairs, args.en_column, args.text_column, spark)
    teacher = load_clip(cfg.embed, device=args.device)  # the embed model's text tower
    thresholds = {"multi": args.threshold, "nolang": args.threshold} if args.threshold else None
    meta = train_text_tower(
        teacher,
        english,
        texts,
        args.out,
        base=args.base,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        max_length=args.max_length,
        vocab_size=args.vocab_size,
        seed=args.seed,
        thresholds=thresholds,
        threads=args.threads,
    )
    if args.calibrate_generated:
        cal = calibrate_on_generated(args.out, teacher)
        meta["calibration"] = cal
        meta["thresholds"] = {"multi": cal["tower_threshold"], "nolang": cal["tower_threshold"]}
        meta["threshold_source"] = "calibrated on generated pairs"
        with open(f"{args.out.rstrip('/')}/{SIDECAR}", "w") as f:
            json.dump(meta, f, indent=2, default=str)
    print(json.dumps(meta, indent=2, default=str))
    print(f"use it: --set embed.text_towers.multi={args.out} (and .nolang)")
    return 0


def _is_path(source: str) -> bool:
    import os

    return os.path.exists(os.path.expanduser(source)) or "/" in source


def register(sub) -> None:
    p = sub.add_parser(
        "train-text-tower",
        help="distil a multilingual text tower into the embed model's text space (M-CLIP)",
    )
    add_common(p)
    p.add_argument(
        "--pairs",
        required=True,
        help="parallel captions: parquet file/folder, Delta table folder or catalog table",
    )
    p.add_argument("--out", required=True, help="directory to write the tower (M-CLIP layout)")
    p.add_argument("--en-column", default="en", help="column of the English captions")
    p.add_argument("--text-column", default="text", help="column of their translations")
    p.add_argument(
        "--base",
        default="tiny",
        help="tiny (small XLM-R + tokenizer trained on the pairs), a pretrained encoder "
        "(directory or hub id, e.g. xlm-roberta-base), or a tower directory to continue",
    )
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-length", type=int, default=32, help="tokens per caption")
    p.add_argument("--vocab-size", type=int, default=2000, help="tokenizer size (base tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--threshold",
        type=float,
        help="CLIP-filter threshold to record for the tower (default: the teacher's)",
    )
    p.add_argument(
        "--calibrate-generated",
        action="store_true",
        help="calibrate the threshold on the demo's generated images (tiny-clip teachers)",
    )
    p.set_defaults(func=cmd_train_text_tower)
