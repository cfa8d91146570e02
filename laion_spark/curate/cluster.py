"""k-means over embeddings (faiss) and the distributed nearest-centroid assignment.

Centroids are trained on the driver from a bounded random sample (`max_train` rows, like
DataComp trained on a subsample of the pool); assignment runs on executors with the
centroids broadcast, so the pool itself is never collected.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def to_matrix(values) -> np.ndarray:
    """A column of arrays (pandas/Arrow) as a float32 matrix."""
    if len(values) == 0:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in values])


def sample_embeddings(df: DataFrame, col: str, max_rows: int, seed: int) -> np.ndarray:
    """Up to `max_rows` non-null embeddings, sampled without collecting the rest."""
    df = df.where(F.col(col).isNotNull()).select(col)
    n = df.count()
    if n > max_rows:
        df = df.sample(fraction=min(1.0, 1.2 * max_rows / n), seed=seed).limit(max_rows)
    rows = df.collect()
    return to_matrix([r[0] for r in rows])


def train_kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    """Spherical k-means centroids (L2-normalised), k clipped to the number of points."""
    import faiss

    x = normalise(x)
    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=100_000,
    )
    km.train(x)
    return normalise(km.centroids)


def assign(df: DataFrame, col: str, centroids: np.ndarray, out: str = "cluster") -> DataFrame:
    """Add `out` (nearest centroid by cosine) and `centroid_sim` to df, on executors."""
    bc = df.sparkSession.sparkContext.broadcast(centroids)
    schema = df.select(col).schema  # noqa: F841 (documents the input)
    fields = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in df.schema.fields)
    out_schema = f"{fields}, `{out}` int, centroid_sim float"

    def _assign(it: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        c = bc.value
        for pdf in it:
            ok = pdf[col].notna().to_numpy()
            lab = np.full(len(pdf), -1, np.int32)
            sim = np.full(len(pdf), np.nan, np.float32)
            if ok.any():
                x = normalise(to_matrix(pdf[col][ok].tolist()))
                s = x @ c.T
                lab[ok] = s.argmax(1)
                sim[ok] = s.max(1)
            pdf = pdf.copy()
            pdf[out] = lab
            pdf["centroid_sim"] = sim
            yield pdf

    return df.mapInPandas(_assign, out_schema).where(F.col(out) >= 0)
