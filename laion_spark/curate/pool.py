"""The pool view every filter reads: one row per candidate with the columns filters need.

candidates (+ any imported metadata columns, e.g. DataComp's clip_l14_similarity_score)
  ⟕ images (status, sha256, original size)     when the table exists
  ⟕ embeddings of one model (similarity [+ embeddings])
  ⟕ scores (punsafe, pwatermark, flyt_score, ...)
minus taken-down samples. Joins are lazy; nothing is collected.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.config import Config
from laion_spark.tables import Tables
from laion_spark.takedown.rules import exclude_taken_down


def _prefixed(df: DataFrame, keep: list[str], taken: set[str]) -> DataFrame:
    """Select `keep` columns of df (plus sample_id), skipping names the pool already has."""
    cols = [c for c in keep if c in df.columns and c not in taken]
    return df.select("sample_id", *cols)


def pool_model_id(tables: Tables, cfg: Config) -> str | None:
    """The embeddings model whose similarity (and vectors) the pool carries."""
    from laion_spark.models.clip import embedding_model_id

    return embedding_model_id(cfg, tables, cfg.curate.model_id, "curate.model_id")


def build_pool(
    tables: Tables, cfg: Config, with_embeddings: bool = False, model_id: str | None = None
) -> DataFrame:
    """The pool view (lazy). `with_embeddings` adds image_embedding / text_embedding;
    `model_id` is the embeddings model (default: pool_model_id)."""
    pool = tables.read("candidates")
    if tables.exists("images"):
        img = tables.read("images").select(
            "sample_id",
            F.col("status").alias("image_status"),
            "sha256",
            F.col("original_width").alias("_img_w"),
            F.col("original_height").alias("_img_h"),
        )
        pool = pool.join(img, "sample_id", "left")
        # imported metadata knows the original size; a downloaded image knows it too
        pool = (
            pool.withColumn("original_width", F.coalesce("original_width", "_img_w"))
            .withColumn("original_height", F.coalesce("original_height", "_img_h"))
            .drop("_img_w", "_img_h")
        )
        if cfg.curate.require_image:
            pool = pool.where(F.col("image_status") == "success")
    elif "sha256" not in pool.columns:
        pool = pool.withColumn("sha256", F.lit(None).cast("string"))
    model_id = model_id or pool_model_id(tables, cfg)
    if model_id is not None:
        emb_cols = ["similarity"] + (
            ["image_embedding", "text_embedding"] if with_embeddings else []
        )
        emb = (
            tables.read("embeddings")
            .where(
                (F.col("model_id") == model_id)
                & F.coalesce(F.col("status"), F.lit("success")).isin("success")
            )
            .select("sample_id", *emb_cols)
        )
        pool = pool.join(emb, "sample_id", "left")
    else:
        pool = pool.withColumn("similarity", F.lit(None).cast("float"))
    if tables.exists("scores"):
        sc = tables.read("scores")
        keep = [
            c for c in sc.columns if c not in ("sample_id", "model_id", "scored_at", "score_models")
        ]
        pool = pool.join(_prefixed(sc, keep, set(pool.columns)), "sample_id", "left")
    return exclude_taken_down(tables, pool)
