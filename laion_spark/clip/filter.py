"""CLIP filter: keep pairs whose image-text cosine >= the threshold of their language group.

LAION-5B: 0.28 for English with ViT-B/32, 0.26 for the multilingual set. The thresholds are
`clip.threshold_en` / `clip.threshold_multi`; unset, the model's own defaults apply (LAION's
for real CLIP models, the calibrated value stored with the tiny-clip checkpoint).

Kept samples go to the `subsets` table as (subset=clip.subset, sample_id, repeat=1). A sample
that no longer passes (threshold raised, model changed) is deleted from that subset, so the
subset always equals "passes the current filter" and re-runs are no-ops.
"""

from __future__ import annotations

import time

from laion_spark.clip.model import filter_thresholds, load_clip
from laion_spark.stage import StageResult


def clip_filter(spark, cfg, tables, model_id: str | None = None) -> StageResult:
    """Write subset `cfg.clip.subset` (default "clip_filter") from embeddings of `model_id`.

    `model_id` defaults to the configured model's id. Language group comes from
    candidates.language_group: "en" -> threshold_en, anything else (multi, nolang, null)
    -> threshold_multi.
    """
    from pyspark.sql import functions as F

    t0 = time.time()
    clip = load_clip(cfg.clip)
    mid = model_id or clip.model_id
    thr = filter_thresholds(cfg.clip, clip)
    subset = cfg.clip.subset
    emb = (
        tables.read("embeddings")
        .where((F.col("model_id") == mid) & (F.col("status") == "success"))
        .select("sample_id", "similarity")
    )
    lang = tables.read("candidates").select("sample_id", "language_group")
    df = emb.join(lang, "sample_id", "left")
    threshold = F.when(F.col("language_group") == "en", F.lit(thr["en"])).otherwise(
        F.lit(thr["multi"])
    )
    decided = df.select(
        "sample_id", (F.col("similarity") >= threshold).alias("keep"), "language_group"
    ).cache()
    try:
        kept = decided.where("keep").select(
            F.lit(subset).alias("subset"),
            "sample_id",
            F.lit(1).cast("int").alias("repeat"),
            F.current_timestamp().alias("created_at"),
        )
        tables.upsert(kept, "subsets", update=False)  # insert-only: created_at stays the first time
        removed = decided.where("NOT keep").select("sample_id")
        if tables.exists("subsets"):
            # a sample that passed earlier but not now leaves the subset (idempotent delete)
            (
                tables.delta("subsets")
                .alias("t")
                .merge(
                    removed.alias("s"),
                    f"t.subset = '{subset}' AND t.sample_id = s.sample_id",
                )
                .whenMatchedDelete()
                .execute()
            )
        stats = {
            # key: (is_en: True/False/None for a null group, keep)
            (r["is_en"], bool(r["keep"])): int(r["count"])
            for r in decided.groupBy((F.col("language_group") == "en").alias("is_en"), "keep")
            .count()
            .collect()
        }
    finally:
        decided.unpersist()
    kept_n = sum(v for (_, k), v in stats.items() if k)
    removed_n = sum(v for (_, k), v in stats.items() if not k)
    return StageResult(
        "clip_filter",
        rows_in=kept_n + removed_n,
        rows_out=kept_n,
        by_status={"kept": kept_n, "removed": removed_n},
        seconds=time.time() - t0,
        notes={
            "model_id": mid,
            "subset": subset,
            "threshold_en": thr["en"],
            "threshold_multi": thr["multi"],
            "kept_en": stats.get((True, True), 0),
            "removed_en": stats.get((True, False), 0),
            "kept_multi": stats.get((False, True), 0) + stats.get((None, True), 0),
            "removed_multi": stats.get((False, False), 0) + stats.get((None, False), 0),
        },
    )
