"""INDEX stage: train once on the driver, build one faiss shard per Spark task.

    embeddings (this model, subset, minus takedowns, minus already indexed)
      -> factory by memory budget (factory.py) -> train on a driver sample (GPU if any)
      -> trained empty index broadcast -> each task add_with_ids + writes its shard file
      -> index_ids (faiss_id <-> sample_id) and index_manifest (shard files) via upsert

Incremental: a later run adds only embeddings without an `index_ids` row, as new shards
that reuse the first run's trained index (so all shards stay mergeable). Run
`merge_index` (merge.py) afterwards to get one servable index.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.index import build
from laion_spark.index.factory import choose_factory
from laion_spark.index.faiss_ids import assign_ids
from laion_spark.index.paths import resolve, to_manifest
from laion_spark.index.source import index_dir, source_embeddings
from laion_spark.stage import StageResult

_SHARD_SCHEMA = (
    "sample_id string, faiss_id long, shard string, path string, size_bytes long, "
    "build_seconds double, bad_dim long"
)


def _manifest(tables, name: str):
    return tables.read("index_manifest").where(F.col("index_name") == name)


def trained_index(
    spark, cfg: Config, tables, pending, model_id, n_new: int, dim: int
) -> tuple[bytes, str, float]:
    """(serialised trained empty index, factory, seconds): reuse this index's, or train."""
    ic = cfg.index
    rows = _manifest(tables, ic.name).where("kind = 'trained'").collect()
    if rows:
        row = rows[0]
        return storage.read_bytes(resolve(cfg, row["path"])), row["factory"], 0.0
    sample = pending
    if n_new > ic.train_max_vectors:
        sample = pending.sample(fraction=min(1.0, 1.2 * ic.train_max_vectors / n_new), seed=17)
    vectors = sample.limit(ic.train_max_vectors).select("vector").toPandas()["vector"].tolist()
    data, factory, seconds, row = train_new(
        cfg, build.as_matrix(vectors, dim), n_new, dim, model_id
    )
    write_manifest(spark, tables, [row])
    return data, factory, seconds


def train_new(
    cfg: Config, xt: np.ndarray, n_new: int, dim: int, model_id: str | None
) -> tuple[bytes, str, float, dict]:
    """Train this index's empty index on the sample `xt` (of `n_new` vectors to add) and write
    it: (serialised index, factory, seconds, its `trained` manifest row)."""
    ic = cfg.index
    t0 = time.time()
    factory = (
        ic.factory
        or choose_factory(
            n_new, dim, ic.memory_budget_mb * 2**20, ic.flat_max_vectors, ic.train_max_vectors
        ).factory
    )
    xt = xt[np.isfinite(xt).all(axis=1)] if len(xt) else xt
    index = build.train_index(factory, xt, ic.metric, ic.use_gpu)
    data = build.serialize(index)
    path = storage.join(index_dir(cfg), "trained.index")
    size = storage.write_bytes(path, data)
    seconds = time.time() - t0
    row = manifest_row(cfg, "trained", "trained", path, factory, model_id, 0, dim, seconds, size)
    row["params"] = build.dumps({"train_points": int(len(xt))})
    return data, factory, seconds, row


def manifest_row(
    cfg: Config,
    shard: str,
    kind: str,
    path: str,
    factory: str,
    model_id: str | None,
    count: int,
    dim: int,
    seconds: float,
    size: int,
    run_id: str | None = None,
) -> dict:
    """One `index_manifest` row of this index (path stored relative to the workdir)."""
    return {
        "index_name": cfg.index.name,
        "shard": shard,
        "kind": kind,
        "path": to_manifest(cfg, path),
        "factory": factory,
        "model_id": model_id,
        "count": int(count),
        "dim": int(dim),
        "build_seconds": float(seconds),
        "size_bytes": int(size),
        "metric": cfg.index.metric,
        "run_id": run_id,
        "params": None,
    }


def add_vectors(index, faiss_ids: np.ndarray, vectors: list, dim: int) -> tuple[np.ndarray, int]:
    """Add the vectors of length `dim` with finite values to `index` under their ids: (mask
    of the rows added, how many were not)."""
    ok = np.array([v is not None and len(v) == dim for v in vectors], dtype=bool)
    x = build.as_matrix([v for v, good in zip(vectors, ok, strict=True) if good], dim)
    fin = np.isfinite(x).all(axis=1)
    ok[np.flatnonzero(ok)[~fin]] = False
    if fin.any():
        index.add_with_ids(x[fin], np.asarray(faiss_ids, dtype="int64")[ok])
    return ok, int(len(vectors) - ok.sum())


def write_manifest(spark, tables, rows: list[dict]) -> None:
    """Upsert `index_manifest` rows (created now): by delta-rs for a local table (a few rows,
    where a Spark MERGE costs seconds), through Spark otherwise or when delta-rs cannot."""
    if not rows:
        return
    if tables.local("index_manifest"):
        now = datetime.now(UTC)
        if tables.upsert_rows_local([{**r, "created_at": now} for r in rows], "index_manifest"):
            return
    tables.upsert(_manifest_df(spark, rows), "index_manifest")


def _manifest_df(spark, rows: list[dict]):
    from laion_spark.tables import SPECS

    schema = SPECS["index_manifest"].schema
    cols = [f.name for f in schema.fields if f.name != "created_at"]
    df = spark.createDataFrame([[r.get(c) for c in cols] for r in rows], schema=_sub(schema, cols))
    return df.withColumn("created_at", F.current_timestamp())


def _sub(schema, cols):
    from pyspark.sql import types as T

    return T.StructType([schema[c] for c in cols])


def run(spark, cfg: Config, tables, id_fn: Callable[[str], int] | None = None) -> StageResult:
    """Index the embeddings of cfg.index.model_id / cfg.index.subset not yet in `index_ids`."""
    t0 = time.time()
    ic = cfg.index
    from laion_spark.index import local

    if local.wants_local(cfg, tables):  # before any Spark job: a small local run starts none
        return local.run_index(spark, cfg, tables, t0, id_fn or _default_id_fn())
    emb, model_id = source_embeddings(cfg, tables)
    done = tables.read("index_ids").where(F.col("index_name") == ic.name)
    pending = emb.join(done.select("sample_id"), "sample_id", "left_anti")
    pending = pending.where(F.size("vector") > 0)
    n_new = pending.count()
    if n_new == 0:
        return StageResult(
            "index", 0, 0, {"already_indexed": done.count()}, time.time() - t0, {"index": ic.name}
        )
    dim = int(pending.select(F.size("vector")).first()[0])
    data, factory, train_s = trained_index(spark, cfg, tables, pending, model_id, n_new, dim)

    ids, collisions = assign_ids(
        pending, done.select("sample_id", "faiss_id"), id_fn or _default_id_fn()
    )
    run_id = new_run_id()
    shard_dir = storage.join(index_dir(cfg), "shards")
    bc = spark.sparkContext.broadcast(data)

    def build_shard(batches):
        import faiss
        from pyspark import TaskContext

        faiss.omp_set_num_threads(1)  # one core per Spark task; Spark parallelises
        t = time.time()
        index = build.deserialize(bc.value)
        sids, fids, bad = [], [], 0
        for pdf in batches:
            added, missed = add_vectors(index, pdf["faiss_id"].to_numpy(), list(pdf["vector"]), dim)
            bad += missed
            sids.append(pdf["sample_id"][added])
            fids.append(pdf["faiss_id"][added])
        if index.ntotal == 0:
            if bad:
                yield pd.DataFrame(
                    {
                        "sample_id": [None],
                        "faiss_id": [None],
                        "shard": [None],
                        "path": [None],
                        "size_bytes": [0],
                        "build_seconds": [0.0],
                        "bad_dim": [bad],
                    }
                )
            return
        shard = f"{run_id}-{TaskContext.get().partitionId():05d}"
        path = storage.join(shard_dir, f"{shard}.index")
        size = storage.write_bytes(path, build.serialize(index))
        n = int(index.ntotal)
        yield pd.DataFrame(
            {
                "sample_id": pd.concat(sids).to_numpy(),
                "faiss_id": pd.concat(fids).to_numpy(),
                "shard": shard,
                "path": path,
                "size_bytes": size,
                "build_seconds": time.time() - t,
                "bad_dim": [bad] + [0] * (n - 1),
            }
        )

    from pyspark import StorageLevel

    built = (
        ids.select("sample_id", "faiss_id", "vector")
        .repartition(ic.partitions)
        .mapInPandas(build_shard, _SHARD_SCHEMA)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        shards = (
            built.where("shard IS NOT NULL")
            .groupBy("shard")
            .agg(
                F.count("*").alias("count"),
                F.first("path").alias("path"),
                F.first("size_bytes").alias("size_bytes"),
                F.max("build_seconds").alias("build_seconds"),
            )
            .collect()
        )
        bad = int(built.agg(F.sum("bad_dim")).first()[0] or 0)
        # manifest first, then ids in one MERGE: a shard whose ids never got committed is
        # an orphan that merge skips, and its rows are simply indexed again next run
        rows = [
            manifest_row(
                cfg,
                s["shard"],
                "shard",
                s["path"],
                factory,
                model_id,
                s["count"],
                dim,
                s["build_seconds"],
                s["size_bytes"],
                run_id,
            )
            for s in shards
        ]
        write_manifest(spark, tables, rows)
        tables.upsert(
            built.where("shard IS NOT NULL").select(
                F.lit(ic.name).alias("index_name"), "sample_id", "faiss_id", "shard"
            ),
            "index_ids",
        )
    finally:
        built.unpersist()
        bc.unpersist()
    notes = {"collisions": collisions, "train_seconds": round(train_s, 1), "run_id": run_id}
    return index_result(cfg, t0, n_new, rows, bad, factory, notes, "spark")


def index_result(
    cfg: Config,
    t0: float,
    n_new: int,
    rows: list[dict],
    bad: int,
    factory: str,
    notes: dict,
    engine: str,
) -> StageResult:
    """The stage's result: `rows` are the manifest rows of the shards this run wrote."""
    added = sum(r["count"] for r in rows)
    by_status = {"indexed": added}
    if bad:
        by_status["bad_vector"] = bad
    return StageResult(
        "index",
        n_new,
        added,
        by_status,
        time.time() - t0,
        {
            "index": cfg.index.name,
            "factory": factory,
            "shards": len(rows),
            **notes,
            "engine": engine,
        },
    )


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _default_id_fn():
    from laion_spark.ids import sample_id_int64

    return sample_id_int64
