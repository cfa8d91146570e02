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

    def used(cands: set[int]) -> set[int]:  # ONE Spark job per probe round
        table = spark.createDataFrame([(c,) for c in cands], "faiss_id long")
        found = every.join(F.broadcast(table), "faiss_id", "left_semi").select("faiss_id")
        return {r[0] for r in found.distinct().collect()}

    members = [
        (int(r["faiss_id"]), [(m["new"], m["sample_id"]) for m in r["rows"]]) for r in clashes
    ]
    override = resolve_clashes(members, used)
    table = spark.createDataFrame(list(override.items()), "sample_id string, new_id long")
    fixed = (
        hashed.join(F.broadcast(table), "sample_id", "left")
        .withColumn("faiss_id", F.coalesce("new_id", "faiss_id"))
        .drop("new_id")
    )
    return fixed, len(override)


def assign_ids_local(
    pending: list[str],
    existing: dict[int, str],
    id_fn: Callable[[str], int] = sample_id_int64,
) -> tuple[list[int], int]:
    """`assign_ids` in this process: the faiss id of each of the `pending` sample_ids (the
    same ids the Spark path gives), and the collision count. `existing` is faiss_id ->
    sample_id of the rows already in the index."""
    hashed = [int(id_fn(s)) for s in pending]
    groups: dict[int, list[tuple[int, str]]] = {}
    for sid, h in zip(pending, hashed, strict=True):
        groups.setdefault(h, []).append((1, sid))
    for fid, sid in existing.items():
        if fid in groups:
            groups[fid].append((0, sid))
    clashes = [(h, m) for h, m in groups.items() if len(m) > 1]
    if not clashes:
        return hashed, 0
    held = set(groups) | set(existing)
    override = resolve_clashes(clashes, lambda cands: cands & held)
    return [override.get(s, h) for s, h in zip(pending, hashed, strict=True)], len(override)


def resolve_clashes(
    clashes: list[tuple[int, list[tuple[int, str]]]], used: Callable[[set[int]], set[int]]
) -> dict[str, int]:
    """sample_id -> new id for every sample that must leave its clashing home id.

    `clashes` are (home id, its members as (new, sample_id)); an existing member (new=0)
    sorts first and keeps the id, otherwise the smallest sample_id does. `used(ids)` says
    which of the proposed ids some row already holds."""
    movers: list[tuple[str, int, int, int]] = []
    for home, rows in clashes:
        members = sorted(set(rows))
        k = len(members) - 1
        movers.extend((sid, home, j, k) for j, (_, sid) in enumerate(members[1:], 1))
    return _probe(used, movers)


def _probe(
    used: Callable[[set[int]], set[int]], movers: list[tuple[str, int, int, int]]
) -> dict[str, int]:
    """sample_id -> the first free id of its probe sequence, checked in batched rounds.

    `movers` are (sample_id, home id, rank j among the k movers of that home, k). Mover j
    probes h + i * STEP for i = j, j + k, j + 2k, ...: disjoint sequences, so movers that
    share a home never propose the same id. Each round looks every proposal up in one call
    of `used` (through Spark, one job: a job per candidate made 50k clashing ids run for
    hours). A candidate is free when no row holds it and no other mover took it this run.
    """
    step = {sid: j for sid, _, j, _ in movers}
    stride = {sid: k for sid, _, _, k in movers}
    home = {sid: h for sid, h, _, _ in movers}
    override: dict[str, int] = {}
    taken: set[int] = set()
    todo = sorted(home)
    while todo:
        proposed = {sid: (home[sid] + step[sid] * STEP) & MASK for sid in todo}
        held = used(set(proposed.values()))
        retry = []
        for sid in todo:
            cand = proposed[sid]
            if cand in held or cand in taken:
                step[sid] += stride[sid]
                retry.append(sid)
            else:
                taken.add(cand)
                override[sid] = cand
        todo = retry
    return override
