"""Deduplication: exact (image sha256, url+caption) and semantic (SemDeDup), and the
per-sample near-duplicate count (`dedup_size`, a score column for M-FLYT and analysis).

SemDeDup (Abbas et al. 2023): k-means over L2-normalised embeddings; inside each cluster,
items are visited in a fixed order and an item is dropped when its max cosine to an
earlier *kept* item exceeds 1 - eps. Clusters are processed in parallel with
groupBy(cluster).applyInPandas, so one cluster (not the pool) must fit a worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from laion_spark.curate.cluster import assign, normalise, sample_embeddings, to_matrix, train_kmeans
from laion_spark.curate.rules import kept


def exact_dedup(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """One sample per image sha256 and per (url, caption); the smallest sample_id wins."""
    df = pool
    keys = params.get("keys", ["sha256", "url_text"])
    for key in keys:
        cols = ["url", "text"] if key == "url_text" else [key]
        if any(c not in df.columns for c in cols):
            continue
        w = Window.partitionBy(*cols).orderBy("sample_id")
        null = F.lit(False)
        for c in cols:
            null = null | F.col(c).isNull()
        # rows whose key is unknown are not duplicates of anything
        df = df.withColumn("_rn", F.when(null, F.lit(1)).otherwise(F.row_number().over(w)))
        df = df.where("_rn = 1").drop("_rn")
    return kept(df)


def semdedup_keep(x: np.ndarray, eps: float, block: int = 512) -> np.ndarray:
    """Boolean keep-mask over rows of normalised `x` in order: greedy, against kept rows."""
    n = len(x)
    keep = np.zeros(n, bool)
    kept_vecs = np.zeros((0, x.shape[1]), np.float32)
    limit = 1.0 - eps
    for s in range(0, n, block):
        xb = x[s : s + block]
        prev = (xb @ kept_vecs.T).max(1) if len(kept_vecs) else np.full(len(xb), -np.inf)
        inner = xb @ xb.T
        kb = np.zeros(len(xb), bool)
        for i in range(len(xb)):
            m = prev[i]
            if i and kb[:i].any():
                m = max(m, inner[i, :i][kb[:i]].max())
            kb[i] = m <= limit
        keep[s : s + block] = kb
        kept_vecs = np.concatenate([kept_vecs, xb[kb]])
    return keep


def semdedup(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """SemDeDup over `column` (default image_embedding); notes the kept fraction."""
    cur = ctx.cfg.curate
    col = params.get("column", "image_embedding")
    eps = float(params.get("eps", cur.semdedup_eps))
    k = int(params.get("clusters", cur.semdedup_clusters))
    base = pool.where(F.col(col).isNotNull()).select("sample_id", col)
    x = sample_embeddings(base, col, int(params.get("max_train", 200_000)), cur.seed)
    if len(x) == 0:
        ctx.note("semdedup_kept_fraction", None)
        return kept(base.limit(0))
    cents = train_kmeans(x, k, cur.seed)
    clustered = assign(base, col, cents)

    def _dedup(pdf: pd.DataFrame) -> pd.DataFrame:
        # SemDeDup's "keep hard" order: least prototypical first (lowest centroid cosine),
        # sample_id breaks ties so the result is the same on every run
        pdf = pdf.sort_values(["centroid_sim", "sample_id"], kind="mergesort")
        m = semdedup_keep(normalise(to_matrix(pdf[col].tolist())), eps)
        return pd.DataFrame({"sample_id": pdf["sample_id"].to_numpy()[m]})

    out = clustered.groupBy("cluster").applyInPandas(_dedup, "sample_id string").cache()
    n_in, n_out = base.count(), out.count()
    ctx.note("semdedup_kept_fraction", round(n_out / n_in, 4) if n_in else None)
    return kept(out)


def near_duplicate_counts(x: np.ndarray, eps: float, block: int = 1024) -> np.ndarray:
    """For each row of normalised `x`: how many rows (itself included) have cosine
    > 1 - eps to it, i.e. the size of its near-duplicate neighbourhood. Blocked: memory
    is block x n floats."""
    n = len(x)
    out = np.ones(n, np.int32)  # itself
    limit = 1.0 - eps
    for s in range(0, n, block):
        sim = x[s : s + block] @ x.T
        rows = np.arange(len(sim))
        sim[rows, s + rows] = -np.inf  # the row itself, whatever rounding says
        out[s : s + block] += (sim > limit).sum(1).astype(np.int32)
    return out


def dedup_size(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """Score column `dedup_cluster_size`: the near-duplicate count of each sample among the
    pool's `column` embeddings (within SemDeDup's k-means clusters, same eps), so a picture
    uploaded 40 times scores 40 and a unique one 1."""
    cur = ctx.cfg.curate
    col = params.get("column", "image_embedding")
    eps = float(params.get("eps", cur.semdedup_eps))
    k = int(params.get("clusters", cur.semdedup_clusters))
    out = params.get("output", "dedup_cluster_size")
    base = pool.where(F.col(col).isNotNull()).select("sample_id", col)
    x = sample_embeddings(base, col, int(params.get("max_train", 200_000)), cur.seed)
    if len(x) == 0:
        return pool.sparkSession.createDataFrame([], f"sample_id string, {out} int")
    cents = train_kmeans(x, k, cur.seed)

    def _count(pdf: pd.DataFrame) -> pd.DataFrame:
        c = near_duplicate_counts(normalise(to_matrix(pdf[col].tolist())), eps)
        return pd.DataFrame({"sample_id": pdf["sample_id"].to_numpy(), out: c})

    return (
        assign(base, col, cents)
        .groupBy("cluster")
        .applyInPandas(_count, f"sample_id string, {out} int")
    )
