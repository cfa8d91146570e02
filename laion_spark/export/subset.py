"""Export a subset as one file: a DataComp-compatible uid array (.npy) or a parquet folder.

(`laion-spark export SUBSET --out PATH`; sharded exports with a manifest are
laion_spark.export.stage.) Taken-down samples are left out.

DataComp's resharder takes a numpy array of dtype `u8,u8` (the uid's 128 bits as two
unsigned 64-bit halves), sorted. The uid of a sample is its DataComp uid when it was
imported from DataComp metadata (candidates.original_id, 32 hex digits), else the 128
bits of its sample_id (also 32 hex digits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.curate.subsets import read_subset
from laion_spark.tables import Tables
from laion_spark.takedown.rules import exclude_taken_down

UID_DTYPE = np.dtype("u8,u8")


def uids_to_array(uids: list[str]) -> np.ndarray:
    """32-hex uids -> sorted `u8,u8` array, exactly as DataComp builds it."""
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], UID_DTYPE)
    arr.sort()
    return arr


def subset_frame(tables: Tables, name: str) -> DataFrame:
    """The subset joined with its candidates: sample_id, uid, url, text, repeat, ..."""
    sub = read_subset(tables, name)
    cand = tables.read("candidates")
    cols = [
        c
        for c in ("url", "text", "language", "original_width", "original_height")
        if c in cand.columns
    ]
    df = sub.join(cand.select("sample_id", "original_id", *cols), "sample_id", "left")
    uid = F.when(
        F.coalesce(F.col("original_id"), F.lit("")).rlike("^[0-9a-fA-F]{32}$"),
        F.lower("original_id"),
    ).otherwise(F.col("sample_id"))
    # a takedown recorded after curate must still keep the sample out of every export
    return exclude_taken_down(tables, df.withColumn("uid", uid))


def export_uids(tables: Tables, name: str, path: str, expand_repeats: bool = False) -> int:
    """Write subset `name` as a sorted `u8,u8` .npy; returns the number of entries.

    expand_repeats: a sample with repeat r appears r times (for samplers; DataComp's own
    baselines never repeat, so the default writes each uid once).
    """
    df = subset_frame(tables, name).select("uid", "repeat")
    uids: list[str] = []
    for row in df.toLocalIterator():  # 16 bytes per uid end up on the driver anyway
        uids.extend([row[0]] * (max(1, int(row[1] or 1)) if expand_repeats else 1))
    arr = uids_to_array(uids)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return len(arr)


def export_parquet(tables: Tables, name: str, path: str) -> int:
    """Write subset `name` with its metadata as parquet; returns the row count."""
    df = subset_frame(tables, name)
    df.write.mode("overwrite").parquet(path)
    return df.count()
