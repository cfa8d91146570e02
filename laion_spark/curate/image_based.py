"""DataComp's image-based filter: keep samples whose image cluster is nearest to a target set.

k-means (faiss) over the pool's image embeddings; every target embedding (DataComp: the
ImageNet train set) votes for its nearest centroid; samples assigned to a voted centroid
are kept. Like DataComp, a light caption filter (English, > 1 word, > 5 chars) runs first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.curate.cluster import assign, normalise, sample_embeddings, to_matrix, train_kmeans
from laion_spark.curate.rules import caption_counts, kept


def load_targets(spark, target: str) -> np.ndarray:
    """Target embeddings from a Delta/parquet path or table name (column `embedding`
    or `image_embedding`)."""
    if "/" in target or target.endswith(".parquet"):
        fmt = "parquet" if target.endswith(".parquet") else "delta"
        df = spark.read.format(fmt).load(target)
    else:
        df = spark.read.table(target)
    col = "embedding" if "embedding" in df.columns else "image_embedding"
    return to_matrix([r[0] for r in df.select(col).collect()])


def image_based(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    cur = ctx.cfg.curate
    col = params.get("column", "image_embedding")
    targets = ctx.targets.get(params.get("target_name", "image_based"))
    if targets is None:
        path = params.get("target") or cur.image_target
        if not path:
            raise ValueError("image_based needs target embeddings: curate.image_target")
        targets = load_targets(pool.sparkSession, path)
    df = pool.where(F.col(col).isNotNull())
    if params.get("caption_filter", True) and "language" in df.columns:

        @F.pandas_udf("boolean")
        def _caption_ok(texts):
            c = caption_counts(texts)
            # DataComp's image-based caption filter counts fastText tokens; whitespace
            # words are the same for plain captions
            return (c["words"] > 1) & (c["chars"] > 5)

        df = df.where((F.col("language") == "en") & _caption_ok(F.col("text")))
    base = df.select("sample_id", col)
    x = sample_embeddings(base, col, int(params.get("max_train", 200_000)), cur.seed)
    if len(x) == 0:
        return kept(base.limit(0))
    cents = train_kmeans(x, int(params.get("clusters", cur.image_clusters)), cur.seed)
    wanted = sorted({int(i) for i in (normalise(targets) @ cents.T).argmax(1)})
    ctx.note("image_based_clusters", f"{len(wanted)}/{len(cents)}")
    return kept(assign(base, col, cents).where(F.col("cluster").isin(wanted)))
