"""Curate stage time at N samples: the default filters, the no-op re-run, the full filter set.

    .venv/bin/python benchmarks/bench_curate.py --rows 20000 --repeat 3 [--full] [--profile]

Inputs come from benchmarks/minidatacomp/profile_curate.write_inputs (full=True):
candidates, 64-d embeddings with similarity, images (sha256, ~5% repeated images) and
scores (punsafe, pwatermark) of `--rows` samples, written into a fresh Delta workdir per
repeat (not timed). Timed on one local[2] session (conf/local.yaml):

  default_s  `run_stage("curate", ...)` with conf/local.yaml's `curate.filters`, on the
             fresh workdir (no subsets yet): median / min / max over `--repeat` runs
  noop_s     the same call again right after: the stage finds its inputs and settings
             unchanged (state digest) and skips; median over the repeats
  full_s     `--full`: one run of every built-in filter the generated pool can feed,
             FLYT / M-FLYT (on a generated 10-class downstream task) and the samplers
             included, on another fresh workdir; seconds per filter from the stage's notes

`--profile` also prints where each default run's time goes (the wrappers of
profile_curate: count, localCheckpoint, MERGE, ...). The target is 60 s for the default
filters at 20,000 samples (issue 19).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_result  # noqa: E402
from benchmarks.minidatacomp import profile_curate  # noqa: E402

TARGET_S = 60
# built-in names the generated pool cannot feed: they read imported DataComp metadata columns
NEEDS_METADATA = ("clip_l14_top30", "clip_b32_top30")
# scorers first (later names read their columns), samplers after the scores they sample by
SCORERS = ("flyt", "dedup_size", "mflyt")
DIM = 64


def full_names() -> list[str]:
    from laion_spark.curate.registry import BUILTIN

    rest = [n for n in BUILTIN if n not in SCORERS and n not in NEEDS_METADATA]
    return list(SCORERS) + rest


def flyt_task(seed: int = 0, classes: int = 10, per_class: int = 50):
    """A generated downstream task: (task image embeddings, labels, class text embeddings)."""
    rng = np.random.default_rng(seed)
    cls = rng.normal(size=(classes, DIM)).astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class)
    img = cls[labels] + 0.5 * rng.normal(size=(len(labels), DIM)).astype(np.float32)
    return img, labels.astype(np.int64), cls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also time every built-in filter once")
    ap.add_argument("--profile", action="store_true", help="print each default run's phases")
    args = ap.parse_args()

    from laion_spark.config import load_config
    from laion_spark.session import get_spark
    from laion_spark.stage import run_stage
    from laion_spark.tables import Tables

    root = tempfile.mkdtemp(prefix="bench_curate_")

    def fresh(i: str):
        cfg = load_config("local", [f"workdir={root}/{i}"])
        tables = Tables(get_spark(cfg), cfg)
        profile_curate.write_inputs(tables.spark, tables, args.rows, seed=0, dim=DIM, full=True)
        return cfg, tables

    if args.profile:
        profile_curate.wrap_stage_calls()
    try:
        default_s, noop_s = [], []
        for i in range(args.repeat):
            cfg, tables = fresh(f"default{i}")
            spark = tables.spark
            with profile_curate.section(f"default filters, repeat {i + 1}", quiet=not args.profile):
                t = time.perf_counter()
                r = run_stage("curate", spark, cfg, tables)
                default_s.append(time.perf_counter() - t)
            print(
                f"default run {i + 1}: {default_s[-1]:.1f} s, filters {cfg.curate.filters}, "
                f"rows_in={r.rows_in} rows_out={r.rows_out}, "
                f"per filter {r.notes.get('seconds_by_filter')}",
                flush=True,
            )
            t = time.perf_counter()
            again = run_stage("curate", spark, cfg, tables)
            noop_s.append(time.perf_counter() - t)
            assert again.by_status.get("up_to_date"), f"re-run was not skipped: {again.line()}"
            print(f"no-op re-run {i + 1}: {noop_s[-1]:.2f} s", flush=True)
            shutil.rmtree(f"{root}/default{i}", ignore_errors=True)
        fields: dict[str, object] = {
            "rows": args.rows,
            "default_s": round(statistics.median(default_s), 1),
            "default_min": round(min(default_s), 1),
            "default_max": round(max(default_s), 1),
            "noop_s": round(statistics.median(noop_s), 2),
        }
        if args.full:
            cfg, tables = fresh("full")
            names = full_names()
            t = time.perf_counter()
            r = run_stage(
                "curate", tables.spark, cfg, tables, filters=names,
                targets={"flyt_task": flyt_task(), "image_based": flyt_task()[2]},
            )
            fields["full_s"] = round(time.perf_counter() - t, 1)
            failed = {k: v for k, v in r.notes.items() if k.endswith("_error")}
            print(f"full run: {fields['full_s']} s over {len(names)} names: {names}")
            print(f"   per filter: {r.notes.get('seconds_by_filter')}")
            print(f"   rows per subset: {r.by_status}")
            if failed:
                print(f"   FAILED: {failed}")
        fields["target_s"] = TARGET_S
        print_result(fields)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    main()
