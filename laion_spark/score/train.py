"""`laion-spark train-head`: fit a score head from labelled embeddings and save it.

    metrics = train_head(spark, cfg, tables, "nsfw", "my_labels", "heads/nsfw.pt")

Labels: a Delta/catalog table name, a Spark DataFrame or a pandas DataFrame with
`sample_id` and `label` (0/1 for nsfw/watermark/toxicity; a number for aesthetic). The
embeddings come from the `embeddings` table of the configured model (image embeddings;
text embeddings for toxicity) unless the labels carry an `embedding` column themselves.
A deterministic 80/20 split on sample_id gives the held-out metrics saved with the head.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import pandas as pd

from laion_spark.models.heads import KINDS, save_head, train_mlp


def _holdout(ids: list[str], frac: float = 0.2) -> np.ndarray:
    """True for the held-out rows: a hash of sample_id, the same on every run."""
    return np.array(
        [int(hashlib.sha256(str(s).encode()).hexdigest()[:8], 16) / 2**32 < frac for s in ids]
    )


def _labels_frame(spark, tables, labels: Any):
    if isinstance(labels, pd.DataFrame):
        return spark.createDataFrame(labels)
    if isinstance(labels, str):
        if os.path.isdir(labels) or "://" in labels:
            return spark.read.format("delta").load(labels)
        return spark.read.table(labels)
    return labels  # a Spark DataFrame


def evaluate(
    kind: str, pred: np.ndarray, y: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    if kind == "aesthetic":
        mid = float(np.median(y))
        ss_res = float(((pred - y) ** 2).sum())
        ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
        return {
            "r2": 1.0 - ss_res / ss_tot,
            "mae": float(np.abs(pred - y).mean()),
            # agreement on which side of the median a sample falls: an accuracy for a regressor
            "accuracy": float(((pred > mid) == (y > mid)).mean()),
        }
    return {"accuracy": float(((pred > threshold) == (y > 0.5)).mean())}


def train_arrays(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    ids: list[str],
    out_path: str,
    input: str = "image",
    **fit: Any,
) -> dict[str, Any]:
    """Train on the non-held-out rows, measure on the held-out ones, save, return metrics."""
    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; kinds: {', '.join(KINDS)}")
    test = _holdout(ids)
    if test.all() or not test.any():
        test = np.arange(len(y)) % 5 == 0  # tiny sets: still hold some out
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    m = train_mlp(kind, x[~test], y[~test], **fit)
    from laion_spark.models.heads import Head

    h = Head(kind, m)
    metrics: dict[str, Any] = {
        "kind": kind,
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
    }
    metrics.update(evaluate(kind, h.predict(x[test]), y[test]))
    metrics.update(
        {f"train_{k}": v for k, v in evaluate(kind, h.predict(x[~test]), y[~test]).items()}
    )
    save_head(out_path, kind, m, input=input, metrics=metrics)
    metrics["path"] = out_path
    return metrics


def train_head(
    spark,
    cfg,
    tables,
    kind: str,
    labels_table_or_df: Any,
    out_path: str,
    model_id: str | None = None,
    **fit: Any,
) -> dict[str, Any]:
    """Train a `kind` head (nsfw | watermark | aesthetic | toxicity) and save it to out_path."""
    from pyspark.sql import functions as F

    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; kinds: {', '.join(KINDS)}")
    lab = _labels_frame(spark, tables, labels_table_or_df)
    for c in ("sample_id", "label"):
        if c not in lab.columns:
            raise ValueError(f"labels need columns sample_id and label; got {lab.columns}")
    col = "text_embedding" if kind == "toxicity" else "image_embedding"
    if "embedding" in lab.columns:
        df = lab.select("sample_id", F.col("label").cast("double"), F.col("embedding"))
        used_model = model_id or "given"
    else:
        from laion_spark.models.clip import embedding_model_id

        used_model = embedding_model_id(cfg, tables, model_id, "--model-id")
        emb = tables.read("embeddings").where(F.col("model_id") == used_model)
        df = lab.select("sample_id", F.col("label").cast("double")).join(
            emb.select("sample_id", F.col(col).alias("embedding")), "sample_id"
        )
    pdf = df.where(F.col("embedding").isNotNull() & F.col("label").isNotNull()).toPandas()
    if len(pdf) < 10:
        raise ValueError(f"only {len(pdf)} labelled rows with embeddings; need at least 10")
    x = np.stack([np.asarray(v, dtype=np.float32) for v in pdf["embedding"]])
    metrics = train_arrays(
        kind,
        x,
        pdf["label"].to_numpy(),
        list(pdf["sample_id"]),
        out_path,
        input="text" if kind == "toxicity" else "image",
        **fit,
    )
    metrics["model_id"] = used_model
    return metrics
