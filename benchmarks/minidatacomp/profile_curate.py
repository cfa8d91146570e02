"""Where the curate stage's time goes at mini-DataComp size (not a timed benchmark).

    nice -n 19 .venv/bin/python -m benchmarks.minidatacomp.profile_curate [--rows 24000]

Writes generated candidates / embeddings (64-d) / scores of `--rows` samples, then runs
the curate stage on a few representative names twice: first with an empty `subsets`
table, then after `--filler` extra subsets of the whole pool were written (the benchmark's
stage ends with ~400k subset rows). Every call of the operations below is timed
(wrappers around the real methods; nested calls are counted in both lines):

  build_pool          the pool view (lazy; its cost shows up in the actions)
  subset_rows         a filter's selection materialised (runs the filter + joins)
  replace_subsets     the one MERGE writing the run's subsets (see curate/subsets.py)
  localCheckpoint     subset_rows materialising the selection
  count / collect     every DataFrame.count / collect (clip_top, clip_threshold, rows_in)
  Tables.upsert       upserts (scores, runs; includes its own DeltaMergeBuilder.execute)
  merge.execute       every Delta MERGE (upserts + the subsets replace)
  toLocalIterator     the samplers streaming (sample_id, score) to the driver
  createDataFrame     the samplers' repeat counts back into Spark
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

TIMES: dict[str, list[float]] = defaultdict(list)


def _wrap(owner, attr: str, label: str) -> None:
    fn = getattr(owner, attr)

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMES[label].append(time.perf_counter() - t)

    setattr(owner, attr, timed)


@contextmanager
def section(name: str, quiet: bool = False):
    """Time a block and print the wrapped calls' totals (quiet: print nothing)."""
    TIMES.clear()
    t = time.perf_counter()
    yield
    total = time.perf_counter() - t
    if quiet:
        return
    print(f"\n== {name}: {total:.1f} s")
    for k, v in sorted(TIMES.items(), key=lambda kv: -sum(kv[1])):
        print(f"   {k:<22} {sum(v):7.1f} s in {len(v):3d} calls  (mean {np.mean(v):.2f} s)")


def wrap_stage_calls() -> None:
    """Time every call of the operations listed in the module doc (into TIMES)."""
    from delta.tables import DeltaMergeBuilder
    from pyspark.sql import DataFrame, SparkSession

    from laion_spark.curate import stage as curate_stage
    from laion_spark.curate import subsets
    from laion_spark.tables import Tables

    try:  # pyspark 4: the local session's DataFrames are the classic subclass
        from pyspark.sql.classic.dataframe import DataFrame
    except ImportError:
        pass
    for owner, attr, label in [
        (curate_stage, "build_pool", "build_pool"),
        (DataFrame, "localCheckpoint", "localCheckpoint"),
        (DataFrame, "count", "count"),
        (DataFrame, "collect", "collect"),
        (Tables, "upsert", "Tables.upsert"),
        (DeltaMergeBuilder, "execute", "merge.execute"),
        (DataFrame, "toLocalIterator", "toLocalIterator"),
        (SparkSession, "createDataFrame", "createDataFrame"),
        # imported by name into the stage module: time those references
        (curate_stage, "subset_rows", "subset_rows (filter+checkpoint)"),
        (curate_stage, "replace_subsets", "replace_subsets (MERGE)"),
        (subsets, "subset_rows", "subset_rows (filter+checkpoint)"),
        (subsets, "replace_subsets", "replace_subsets (MERGE)"),
    ]:
        _wrap(owner, attr, label)

def write_inputs(
    spark, tables, n: int, seed: int = 0, dim: int = 64, full: bool = False
) -> list[str]:
    """Generated curate inputs of `n` samples: candidates (url, caption, language, size,
    score_b), embeddings of model "m" (`dim`-d, similarity uniform in [0, 1)); `full` adds
    what a downloaded and scored pool has: `images` (status success, sha256 with ~5%
    repeated images) and `scores` (punsafe, pwatermark). Returns the sample ids."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    ids = [f"{i:032x}" for i in rng.permutation(10 * n)[:n]]
    tables.upsert(
        spark.createDataFrame(
            pd.DataFrame(
                {
                    "sample_id": ids,
                    "url": [f"http://x.example/{i}.jpg" for i in range(n)],
                    "text": ["a red square on the left"] * n,
                    "language": "en",
                    "original_width": np.full(n, 512, np.int32),
                    "original_height": np.full(n, 512, np.int32),
                    "score_b": rng.random(n),
                }
            )
        ),
        "candidates",
    )
    e = rng.normal(size=(n, dim)).astype(np.float32)
    tables.upsert(
        spark.createDataFrame(
            pd.DataFrame(
                {
                    "sample_id": ids,
                    "model_id": "m",
                    "image_embedding": list(e),
                    "text_embedding": list(e),
                    "similarity": rng.random(n).astype(np.float32),
                    "status": "success",
                }
            ),
            "sample_id string, model_id string, image_embedding array<float>, "
            "text_embedding array<float>, similarity float, status string",
        ),
        "embeddings",
    )
    if full:
        # ~5% of the samples show an image another sample already has (exact_dedup's work)
        img = rng.integers(0, n, n)
        img = np.where(rng.random(n) < 0.05, img, np.arange(n))
        tables.upsert(
            spark.createDataFrame(
                pd.DataFrame(
                    {
                        "sample_id": ids,
                        "status": "success",
                        "sha256": [f"{i:064x}" for i in img],
                        "original_width": np.full(n, 512, np.int32),
                        "original_height": np.full(n, 512, np.int32),
                    }
                ),
                "sample_id string, status string, sha256 string, original_width int, "
                "original_height int",
            ),
            "images",
        )
        tables.upsert(
            spark.createDataFrame(
                pd.DataFrame(
                    {
                        "sample_id": ids,
                        "punsafe": rng.beta(1, 8, n).astype(np.float32),
                        "pwatermark": rng.beta(1, 6, n).astype(np.float32),
                    }
                ),
                "sample_id string, punsafe float, pwatermark float",
            ),
            "scores",
        )
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=24_000)
    ap.add_argument("--filler", type=int, default=16)
    args = ap.parse_args()

    from laion_spark.config import load_config
    from laion_spark.curate import stage as curate_stage
    from laion_spark.curate import subsets
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    work = tempfile.mkdtemp(prefix="profile_curate_")
    defs = {
        "scs": {"kind": "soft_cap", "column": "similarity", "n": 3 * args.rows},
        "top30_b": {"kind": "clip_top", "column": "score_b", "fraction": 0.3},
    }
    cfg = load_config("local", [f"workdir={work}"], extra={"curate.definitions": defs})
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    ids = write_inputs(spark, tables, args.rows)
    wrap_stage_calls()
    names = ["no_filter", "basic", "clip_top30", "top30_b", "scs"]
    # with_embeddings: the benchmark's stage joins the embedding arrays into every view
    names_emb = names + ["semdedup"]
    with section(f"stage, {len(names_emb)} names, empty subsets table"):
        r = curate_stage.run(spark, cfg, tables, filters=names_emb)
    print("   per name:", r.notes.get("seconds_by_filter"))
    for i in range(args.filler):
        subsets.write_subset(
            tables,
            f"filler{i}",
            spark.createDataFrame([(s, 1) for s in ids], "sample_id string, repeat int"),
        )
    rows = tables.read("subsets").count()
    with section(f"stage, same names, subsets table at {rows} rows"):
        r = curate_stage.run(spark, cfg, tables, filters=names_emb)
    print("   per name:", r.notes.get("seconds_by_filter"))
    with section("stage, names without embedding-needing filters (no arrays in the view)"):
        r = curate_stage.run(spark, cfg, tables, filters=names)
    print("   per name:", r.notes.get("seconds_by_filter"))
    spark.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    main()
