"""MERGE: all shards of an index -> one memory-mappable index, recall measured.

- IVF indexes: inverted lists of every shard are merged into one `.ivfdata` file that
  faiss memory-maps when serving (faiss `merge_ondisk`); shards are read memory-mapped,
  so the merge never holds the whole index in RAM.
- Flat indexes (small sets): the shards' vectors are concatenated.
- Taken-down samples are removed (`remove_ids`) from the merged index: ids found through
  `index_ids` plus the faiss ids kept in takedown resolutions (the takedown deleted their
  `index_ids` rows). A takedown since the last merge changes the inputs, so the merge runs.
- recall@10 is measured on held-out queries against exact search over the same vectors
  (computed by Spark, partition by partition), after tuning nprobe to index.target_recall.
Everything lands in `index_manifest` as a row of kind `merged`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time

import faiss
import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.index import build
from laion_spark.index.paths import resolve, to_manifest
from laion_spark.index.source import index_dir, taken_down_faiss_ids, taken_down_ids
from laion_spark.index.stage import _manifest, new_run_id, write_manifest
from laion_spark.stage import StageResult


class TopK:
    """The exact top-k faiss ids per query, kept while batches of vectors stream past."""

    def __init__(self, queries: np.ndarray, metric: str, k: int = 10):
        self.q = np.ascontiguousarray(queries, dtype="float32")
        self.metric, self.k = metric, k
        self.best_s = np.full((len(self.q), 0), -np.inf, dtype="float32")
        self.best_i = np.zeros((len(self.q), 0), dtype="int64")

    def add(self, x: np.ndarray, faiss_ids: np.ndarray) -> None:
        if not len(x):
            return
        s = self.q @ x.T
        if self.metric == "l2":
            s = 2 * s - (x * x).sum(1)[None, :]  # -||x-q||^2 up to a per-query constant
        s = np.concatenate([self.best_s, s], axis=1)
        i = np.concatenate([self.best_i, np.broadcast_to(faiss_ids, (len(self.q), len(x)))], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, : self.k]
        self.best_s = np.take_along_axis(s, top, 1)
        self.best_i = np.take_along_axis(i, top, 1)

    def truth(self) -> np.ndarray:
        """(queries, k) faiss ids, best first; -1 where fewer than k vectors were seen."""
        out = np.full((len(self.q), self.k), -1, dtype="int64")
        out[:, : self.best_i.shape[1]] = self.best_i
        return out


def exact_topk(spark, vectors_df, queries: np.ndarray, metric: str, k: int = 10) -> np.ndarray:
    """Exact top-k faiss ids per query over (faiss_id, vector) rows, computed in Spark."""
    bq = spark.sparkContext.broadcast(queries.astype("float32"))

    def topk(batches):
        top = TopK(bq.value, metric, k)
        for pdf in batches:
            x = build.as_matrix(pdf["vector"].tolist(), top.q.shape[1])
            top.add(x, pdf["faiss_id"].to_numpy("int64"))
        rows = [
            (qi, int(top.best_i[qi, j]), float(top.best_s[qi, j]))
            for qi in range(len(top.q))
            for j in range(top.best_s.shape[1])
        ]
        yield pd.DataFrame(rows, columns=["q", "faiss_id", "score"])

    part = vectors_df.mapInPandas(topk, "q long, faiss_id long, score double").toPandas()
    bq.unpersist()
    truth = np.full((len(queries), k), -1, dtype="int64")
    for qi, g in part.groupby("q"):
        g = g.sort_values("score", ascending=False).head(k)
        truth[int(qi), : len(g)] = g["faiss_id"].to_numpy()
    return truth


def merge_index(spark, cfg: Config, tables, force: bool = False) -> StageResult:
    """Merge every committed shard of cfg.index.name into one servable index."""
    t0 = time.time()
    ic = cfg.index
    from laion_spark.index import local as here

    # a small local index is merged in this process (index/local.py), others through Spark
    engine = "local" if here.wants_local(cfg, tables) else "spark"
    got = here.merge_inputs(cfg, tables) if engine == "local" else _spark_inputs(cfg, tables)
    if got is None:
        return StageResult(
            "merge_index", 0, 0, {"no_index": 1}, time.time() - t0, {"index": ic.name}
        )
    trained_row, shards, committed = got["trained"], got["shards"], got["committed"]
    remove = np.array(sorted(got["remove"]), dtype="int64")
    # what this merge would be built from; the same inputs as the latest merge = nothing to do
    inputs = hashlib.sha256(
        json.dumps([sorted(s["shard"] for s in shards), sorted(int(i) for i in remove)]).encode()
    ).hexdigest()[:16]
    latest = got["latest"]
    if (
        latest is not None
        and not force
        and json.loads(latest["params"] or "{}").get("inputs") == inputs
        and storage.exists(resolve(cfg, latest["path"]))
    ):
        return StageResult(
            "merge_index",
            sum(committed.values()),
            int(latest["count"] or 0),
            {"up_to_date": 1},
            time.time() - t0,
            {"index": ic.name, "path": latest["path"], "engine": engine},
        )
    run_id = new_run_id()
    work = tempfile.mkdtemp(prefix=f"merge-{ic.name}-", dir=_local_tmp(cfg))
    cache = os.path.join(work, "shards")
    local = [storage.local_copy(resolve(cfg, s["path"]), cache) for s in shards]
    trained = build.deserialize(storage.read_bytes(resolve(cfg, trained_row["path"])))
    out_local = os.path.join(work, f"merged-{run_id}.index")
    if build.is_ivf(trained):
        merged = build.merge_shards_ondisk(trained, local, out_local, remove)
    else:
        merged = build.merge_shards_flat(
            local, trained_row["metric"] or ic.metric, trained.d, remove
        )
        faiss.write_index(merged, out_local)
    ntotal = int(merged.ntotal)  # the shards may hold more than index_ids still lists
    merge_s = time.time() - t0

    # recall@10 on held-out queries vs exact search over the same (non-removed) vectors
    metric = trained_row["metric"] or ic.metric
    ids, n_queries = got["ids"], ic.heldout_queries
    if engine == "local":
        queries = heldout_queries(cfg, *here.heldout_rows(cfg, tables, ids, n_queries), trained.d)
    else:
        queries = _heldout_queries(cfg, tables, ids, trained.d, n_queries)
    params, recall = {}, None
    if len(queries):
        if engine == "local":
            truth = here.exact_truth(cfg, tables, ids, set(remove.tolist()), queries, metric)
        else:
            truth = exact_topk(spark, _indexed_vectors(cfg, tables, ids, remove), queries, metric)
        params, recall = build.tune_nprobe(
            merged, queries, truth, ic.target_recall, ic.max_nprobe, ic.ef_search
        )
    merged_dir = storage.join(index_dir(cfg), "merged")
    path = storage.join(merged_dir, f"merged-{run_id}.index")
    files = [out_local] + (
        [out_local[:-6] + ".ivfdata"] if os.path.exists(out_local[:-6] + ".ivfdata") else []
    )
    del merged
    size = 0
    for f in files:
        storage.upload(f, storage.join(merged_dir, os.path.basename(f)))
        size += os.path.getsize(f)
    build_s = (
        float(trained_row["build_seconds"] or 0)
        + sum(float(s["build_seconds"] or 0) for s in shards)
        + (time.time() - t0)
    )
    params.update(
        {
            "shards": len(shards),
            "removed": int(len(remove)),
            "queries": int(len(queries)),
            "ondisk": len(files) > 1,
            "merge_seconds": round(merge_s, 2),
            "inputs": inputs,
        }
    )
    row = {
        "index_name": ic.name,
        "shard": f"merged-{run_id}",
        "kind": "merged",
        "path": to_manifest(cfg, path),
        "factory": trained_row["factory"],
        "model_id": trained_row["model_id"],
        "count": int(ntotal),
        "dim": int(trained.d),
        "recall_at_10": recall,
        "build_seconds": build_s,
        "size_bytes": int(size),
        "metric": trained_row["metric"],
        "run_id": run_id,
        "params": build.dumps(params),
    }
    write_manifest(spark, tables, [row])
    if storage.is_local(path):
        # the uploaded copy is the one served; drop the work folder
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return StageResult(
        "merge_index",
        sum(committed.values()),
        int(ntotal),
        {
            "merged": int(ntotal),
            "removed_takedown": max(0, sum(int(s["count"] or 0) for s in shards) - int(ntotal)),
            "orphan_shards": got["orphans"],
        },
        time.time() - t0,
        {
            "index": ic.name,
            "factory": trained_row["factory"],
            "recall_at_10": recall,
            "path": path,
            **{k: v for k, v in params.items() if k in ("nprobe", "efSearch")},
            "engine": engine,
        },
    )


def _spark_inputs(cfg: Config, tables) -> dict | None:
    """What merge_index builds from, read through Spark (see local.merge_inputs)."""
    ic = cfg.index
    man = _manifest(tables, ic.name)
    trained_rows = man.where("kind = 'trained'").collect()
    if not trained_rows:
        return None
    ids = tables.read("index_ids").where(F.col("index_name") == ic.name)
    committed = {
        r["shard"]: r["n"] for r in ids.groupBy("shard").agg(F.count("*").alias("n")).collect()
    }
    shards = [r.asDict() for r in man.where("kind = 'shard'").collect() if r["shard"] in committed]
    orphans = man.where("kind = 'shard'").count() - len(shards)
    gone = taken_down_ids(tables)
    remove = taken_down_faiss_ids(tables, ic.name)
    if gone is not None:
        remove |= {
            int(r[0]) for r in ids.join(gone, "sample_id", "left_semi").select("faiss_id").collect()
        }
    rows = man.where("kind = 'merged'").orderBy(F.col("created_at").desc_nulls_last()).limit(1)
    latest = rows.collect()
    return {
        "trained": trained_rows[0].asDict(),
        "shards": shards,
        "committed": committed,
        "orphans": orphans,
        "remove": remove,
        "latest": latest[0].asDict() if latest else None,
        "ids": ids,
    }


def _local_tmp(cfg: Config) -> str:
    d = os.path.expanduser(cfg.index.local_cache)
    os.makedirs(d, exist_ok=True)
    return d


def _indexed_vectors(cfg: Config, tables, ids, remove: np.ndarray):
    from laion_spark.models.clip import embedding_model_id

    ic = cfg.index
    emb = tables.read("embeddings").where(F.col(ic.vector_column).isNotNull())
    m = embedding_model_id(cfg, tables, ic.model_id, "index.model_id")
    if m is not None:
        emb = emb.where(F.col("model_id") == m)
    df = ids.select("sample_id", "faiss_id").join(
        emb.select("sample_id", F.col(ic.vector_column).alias("vector")), "sample_id"
    )
    if len(remove):
        df = df.where(~F.col("faiss_id").isin([int(x) for x in remove]))
    return df.select("faiss_id", "vector")


def _heldout_queries(cfg: Config, tables, ids, dim: int, n: int) -> np.ndarray:
    """Query vectors: text embeddings of sampled samples when present (cross-modal queries,
    not themselves in an image index), else sampled stored vectors plus small noise."""
    emb = tables.read("embeddings").join(ids.select("sample_id"), "sample_id", "left_semi")
    total = max(1, ids.count())
    frac = min(1.0, 3.0 * n / total)
    rows = emb.sample(fraction=frac, seed=7).limit(n).select("image_embedding", "text_embedding")
    pdf = rows.toPandas()
    return heldout_queries(cfg, list(pdf["image_embedding"]), list(pdf["text_embedding"]), dim)


def heldout_queries(cfg: Config, images: list, texts: list, dim: int) -> np.ndarray:
    """Query vectors from sampled samples' embeddings: their text embeddings when present
    (cross-modal queries, not themselves in an image index), else their stored vectors
    plus small noise."""
    if not images:
        return np.zeros((0, dim), dtype="float32")
    image_index = cfg.index.vector_column == "image_embedding"
    other, own = (texts, images) if image_index else (images, texts)
    vals = [v for v in other if v is not None and len(v) == dim]
    if len(vals) >= max(1, len(images) // 2):
        return build.as_matrix(vals, dim)
    x = build.as_matrix([v for v in own if v is not None and len(v) == dim], dim)
    rng = np.random.default_rng(7)
    x = x + rng.normal(scale=0.05, size=x.shape).astype("float32")
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype("float32")
