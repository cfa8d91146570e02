"""faiss int64 ids for sample_ids: `sample_id_int64`, with collisions resolved.

63 bits of a hash collide with probability ~n^2 / 2^64 (about 5% at 10^9 vectors, so it
must be handled, not ignored). Ids already stored in `index_ids` never change; among new
rows, for each colliding id the smallest sample_id keeps it and the others are moved to
the next free id of the probe sequence h + i * 0x9E3779B97F4A7C15 (mod 2^63). Collisions
are few, so they are resolved on the driver and shipped as a small override map.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.ids import sample_id_int64

MASK = 0x7FFF_FFFF_FFFF_FFFF
STEP = 0x9E3779B97F4A7C15


def _hash_col(df: DataFrame, id_fn: Callable[[str], int]) -> DataFrame:
    @F.pandas_udf("long")
    def _h(s: pd.Series) -> pd.Series:
        return s.map(id_fn).astype("int64")

    return df.withColumn("faiss_id", _h("sample_id"))


def assign_ids(
    pending: DataFrame,
    existing: DataFrame,
    id_fn: Callable[[str], int] = sample_id_int64,
) -> tuple[DataFrame, int]:
    """`pending` (sample_id, ...) with a unique `faiss_id` column, and the collision count.

    `existing` is (sample_id, faiss_id) already in the index.
    """
    hashed = _hash_col(pending, id_fn)
    every = hashed.select("sample_id", "faiss_id", F.lit(1).alias("new")).unionByName(
        existing.select("sample_id", "faiss_id", F.lit(0).alias("new"))
    )
    clashes = (
        every.groupBy("faiss_id")
        .agg(F.count("*").alias("n"), F.collect_list(F.struct("new", "sample_id")).alias("rows"))
        .where("n > 1")
        .collect()
    )
    if not clashes:
        return hashed, 0
    spark = pending.sparkSession
    override: dict[str, int] = {}
    taken: set[int] = set()
    for row in clashes:
        members = sorted((r["new"], r["sample_id"]) for r in row["rows"])
        # an existing id (new=0) sorts first and keeps its id; otherwise the smallest sample_id
        for _, sid in members[1:]:
            h = int(row["faiss_id"])
            i = 1
            while True:
                cand = (h + i * STEP) & MASK
                if cand not in taken:
                    used = every.where(F.col("faiss_id") == cand).limit(1).count()
                    if not used:
                        break
                i += 1
            taken.add(cand)
            override[sid] = cand
    table = spark.createDataFrame(list(override.items()), "sample_id string, new_id long")
    fixed = (
        hashed.join(F.broadcast(table), "sample_id", "left")
        .withColumn("faiss_id", F.coalesce("new_id", "faiss_id"))
        .drop("new_id")
    )
    return fixed, len(override)
