"""Generated clustered embeddings written straight into Delta tables (for index tests)."""

from __future__ import annotations

import numpy as np

from laion_spark.ids import sample_id

MODEL = "test-model"


def clustered(
    n: int, d: int, clusters: int = 20, seed: int = 0, spread: float = 0.35
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    x = centers[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype("float32")


def write_samples(
    spark,
    tables,
    x: np.ndarray,
    start: int = 0,
    partitions: int = 4,
    punsafe=None,
    languages=("en", "de"),
) -> list[str]:
    """embeddings + candidates (+ scores) rows for vectors x; returns their sample_ids."""
    n = len(x)
    urls = [f"http://127.0.0.1:9/img/{start + i}.jpg" for i in range(n)]
    caps = [f"generated sample {start + i}" for i in range(n)]
    sids = [sample_id(u, c) for u, c in zip(urls, caps, strict=True)]
    emb = spark.createDataFrame(
        [(s, MODEL, [float(v) for v in x[i]], None, 0.3, "ok") for i, s in enumerate(sids)],
        "sample_id string, model_id string, image_embedding array<float>, "
        "text_embedding array<float>, similarity float, status string",
    ).repartition(partitions)
    tables.upsert(emb, "embeddings")
    cand = spark.createDataFrame(
        [
            (s, urls[i], caps[i], languages[(start + i) % len(languages)])
            for i, s in enumerate(sids)
        ],
        "sample_id string, url string, text string, language string",
    )
    tables.upsert(cand, "candidates")
    if punsafe is not None:
        sc = spark.createDataFrame(
            [(s, float(punsafe[i])) for i, s in enumerate(sids)], "sample_id string, punsafe float"
        )
        tables.upsert(sc, "scores")
    return sids


def add_takedowns(spark, tables, rows: list[tuple[str, str]]) -> None:
    df = spark.createDataFrame(
        [(f"req-{i}", kind, value, "test") for i, (kind, value) in enumerate(rows)],
        "request_id string, kind string, value string, reason string",
    )
    tables.upsert(df, "takedowns")
