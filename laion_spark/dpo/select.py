"""DPO_SELECT stage: the rule-based filter that turns ranked responses into preference pairs.

    dpo_candidates(scored by this ensemble) ⋈ sft_pool(image_sha256, text_score)
        ─ per-model z-score ─▶ ensemble score ─ groupBy(image) applyInPandas(select_pairs) ─▶
        dpo_pairs (replaced within `dpo.select.name`)

For each image, every two responses to the same prompt template form a candidate pair, the
higher-scored one chosen. Rules, in order (a pair is counted under the first rule it fails;
docs/dpo.md says which come from the paper):

  text_heavy         the image is mostly rendered text (CLIP then scores the text it reads)
  long_response      a response has more than `max_response_words` words (off by default)
  min_chosen_score   the chosen response's score is below `min_chosen_score`
  min_margin         chosen - rejected < `min_margin` (ties included): no clear preference
  length_ratio       longer / shorter > `max_length_ratio` (words): DPO would learn length
  near_identical     content-word similarity >= `max_similarity`: nothing to learn
  cap                beyond `max_pairs_per_image` for the image (largest margins kept,
                     pairs reusing neither response first)

Every rule's removed count and the kept count are in the stage summary. Selection reads the
whole scored pool (the normalisation is a pool statistic) and is cheap next to generation and
scoring, so it is recomputed on each run and the selection's rows in `dpo_pairs` are replaced
in one MERGE: a re-run over unchanged candidates leaves the same rows.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from typing import Any

import numpy as np
import pandas as pd

from laion_spark.dpo import text as textmod
from laion_spark.stage import StageResult, inputs_digest, last_run_digest

log = logging.getLogger(__name__)

RULES = (
    "text_heavy",
    "long_response",
    "min_chosen_score",
    "min_margin",
    "length_ratio",
    "near_identical",
    "cap",
)
PAIR_COLUMNS = [
    "pair_id",
    "pool_id",
    "image_sha256",
    "image_ref",
    "template",
    "prompt",
    "chosen",
    "rejected",
    "chosen_id",
    "rejected_id",
    "chosen_score",
    "rejected_score",
    "margin",
    "length_ratio",
    "similarity",
    "flags",
    "generator_model_id",
]


def pair_id(chosen_id: str, rejected_id: str) -> str:
    return hashlib.sha256(f"{chosen_id}\t{rejected_id}".encode()).hexdigest()[:32]


def ensemble_scores(
    raw: pd.Series, stats: dict[str, tuple[float, float]], normalize: str, first: str
) -> np.ndarray:
    """One score per row from its {model_id: raw cosine} map.

    zscore: each model's cosine standardised with that model's pool mean/std, averaged, then
    put back on the first model's scale (so with one model the score IS its cosine, and the
    thresholds read in that model's cosine units); none: the plain mean of the cosines.
    """
    out = np.empty(len(raw), np.float64)
    mu1, sd1 = stats.get(first, (0.0, 1.0))
    for i, scores in enumerate(raw):
        scores = dict(scores or {})
        if normalize == "zscore":
            zs = [(v - stats[m][0]) / (stats[m][1] or 1.0) for m, v in scores.items() if m in stats]
            out[i] = np.mean(zs) * (sd1 or 1.0) + mu1 if zs else np.nan
        else:
            out[i] = np.mean(list(scores.values())) if scores else np.nan
    return out


def _first_failure(checks: list[tuple[str, bool]]) -> tuple[str | None, list[str]]:
    failed = [name for name, bad in checks if bad]
    return (failed[0] if failed else None), failed


def select_pairs(
    group: pd.DataFrame, sel, min_chosen: float, text_heavy: bool = False
) -> list[dict[str, Any]]:
    """Every candidate pair of one image's scored responses, each with `removed_by` (None =
    kept) and `failed` (all rules it fails). `group` columns: candidate_id, pool_id,
    template, prompt, response, score, model_id, score_chunks (and image_sha256, image_ref)."""
    rows = group.sort_values(["template", "score", "candidate_id"], ascending=[True, False, True])
    rows = rows.to_dict("records")
    key = "template" if sel.same_template else "pool_id"
    pairs: list[dict[str, Any]] = []
    for i, c in enumerate(rows):
        for r in rows[i + 1 :]:
            if c[key] != r[key] or c["pool_id"] != r["pool_id"]:
                continue
            margin = float(c["score"] - r["score"])
            ratio = textmod.length_ratio(c["response"], r["response"])
            sim = textmod.similarity(c["response"], r["response"])
            limit = sel.max_response_words
            too_long = (
                limit is not None
                and max(len(textmod.words(c["response"])), len(textmod.words(r["response"])))
                > limit
            )
            removed, failed = _first_failure(
                [
                    ("text_heavy", text_heavy and sel.drop_text_heavy),
                    ("long_response", too_long),
                    ("min_chosen_score", float(c["score"]) < min_chosen),
                    ("min_margin", margin < sel.min_margin or margin <= 0),
                    ("length_ratio", ratio > sel.max_length_ratio),
                    ("near_identical", sim >= sel.max_similarity),
                ]
            )
            flags = []
            if text_heavy and not sel.drop_text_heavy:
                flags.append("text_heavy")
            if max(int(c.get("score_chunks") or 1), int(r.get("score_chunks") or 1)) > 1:
                flags.append("chunked")
            models = sorted({c["model_id"], r["model_id"]})
            pairs.append(
                {
                    "pair_id": pair_id(c["candidate_id"], r["candidate_id"]),
                    "pool_id": c["pool_id"],
                    "image_sha256": c.get("image_sha256"),
                    "image_ref": c.get("image_ref"),
                    "template": c["template"],
                    "prompt": c["prompt"],
                    "chosen": c["response"],
                    "rejected": r["response"],
                    "chosen_id": c["candidate_id"],
                    "rejected_id": r["candidate_id"],
                    "chosen_score": float(c["score"]),
                    "rejected_score": float(r["score"]),
                    "margin": margin,
                    "length_ratio": float(ratio),
                    "similarity": float(sim),
                    "flags": flags,
                    "generator_model_id": "|".join(models),
                    "removed_by": removed,
                    "failed": failed,
                }
            )
    _cap(pairs, sel.max_pairs_per_image)
    return pairs


def _cap(pairs: list[dict], cap: int) -> None:
    """Keep at most `cap` surviving pairs: largest margins first, and pairs whose responses
    are not in a kept pair yet before pairs that reuse one (more distinct responses)."""
    alive = sorted(
        (p for p in pairs if p["removed_by"] is None), key=lambda p: (-p["margin"], p["pair_id"])
    )
    used: set[str] = set()
    kept: list[dict] = []
    for fresh_only in (True, False):
        for p in alive:
            if len(kept) >= cap or p in kept:
                continue
            if fresh_only and (p["chosen_id"] in used or p["rejected_id"] in used):
                continue
            kept.append(p)
            used.update((p["chosen_id"], p["rejected_id"]))
    for p in alive:
        if p not in kept:
            p["removed_by"] = "cap"


def baseline_pairs(group: pd.DataFrame, kind: str, seed: int = 0) -> list[tuple[str, str]]:
    """(chosen_id, rejected_id) per template by a baseline ranking, for comparison:
    `random` (a coin decides which is chosen) or `length` (the longer response is chosen)."""
    rng = random.Random(seed)
    rows = group.to_dict("records")
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if a["template"] != b["template"] or a["pool_id"] != b["pool_id"]:
                continue
            if kind == "random":
                first = rng.random() < 0.5
            elif kind == "length":
                la, lb = len(textmod.words(a["response"])), len(textmod.words(b["response"]))
                first = la > lb or (la == lb and rng.random() < 0.5)
            else:
                raise ValueError(f"unknown baseline {kind!r}")
            out.append(
                (a["candidate_id"], b["candidate_id"])
                if first
                else (b["candidate_id"], a["candidate_id"])
            )
    return out


def _select_groups(
    sel, min_chosen: float, stats: dict, normalize: str, first: str, threshold: float
):
    """applyInPandas function over one image's scored candidates."""

    def fn(group: pd.DataFrame) -> pd.DataFrame:
        group = group.copy()
        group["score"] = ensemble_scores(group["clip_scores"], stats, normalize, first)
        group = group[group["score"].notna()]
        scores = group["text_score"].dropna()
        heavy = bool(len(scores) and scores.max() >= threshold)
        pairs = select_pairs(group, sel, min_chosen, heavy)
        out = pd.DataFrame(pairs, columns=[*PAIR_COLUMNS, "removed_by"])
        return out

    return fn


def pool_stats(scored) -> dict[str, tuple[float, float]]:
    """model_id -> (mean, std) of its raw cosines over the scored candidates."""
    from pyspark.sql import functions as F

    rows = (
        scored.select(F.explode("clip_scores").alias("model_id", "cos"))
        .groupBy("model_id")
        .agg(F.avg("cos").alias("mu"), F.stddev_samp("cos").alias("sd"))
        .collect()
    )
    return {r["model_id"]: (float(r["mu"]), float(r["sd"] or 0.0) or 1.0) for r in rows}


def run(spark, cfg, tables, force: bool = False) -> StageResult:
    """Mine preference pairs from the scored responses (see the module docstring); a run
    with nothing changed since the last one says so and writes nothing (`force`: select
    again anyway)."""
    t0 = time.time()
    if not tables.exists("dpo_candidates"):
        return StageResult("dpo_select", 0, 0, {}, time.time() - t0, {"candidates": "none yet"})
    digest = _state_digest(cfg, tables)
    if not force and digest == last_run_digest(tables, "dpo_select"):
        # the pool, the scored responses, the pairs and the rules are as the last run left
        # them: it would write the pairs it wrote (and the scorer loads no model)
        notes = {"state_digest": digest, "skipped": "nothing changed since the last run"}
        return StageResult("dpo_select", 0, 0, {"up_to_date": 1}, time.time() - t0, notes)
    result = _select(cfg, tables, t0)
    if not result.error:
        result.notes["state_digest"] = _state_digest(cfg, tables)  # with its own writes
    return result


def _state_digest(cfg, tables) -> str:
    import dataclasses

    settings = {k: dataclasses.asdict(getattr(cfg.dpo, k)) for k in ("select", "score")}
    return inputs_digest(tables, ("sft_pool", "dpo_candidates", "dpo_pairs"), settings)


def _select(cfg, tables, t0: float) -> StageResult:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from laion_spark.dpo.score import load_ensemble, worker_configs
    from laion_spark.tables import spark_schema

    sel, s = cfg.dpo.select, cfg.dpo.score
    ens = load_ensemble(worker_configs(cfg), s.aggregate)
    sid = ens.scorer_id
    min_chosen = (
        sel.min_chosen_score if sel.min_chosen_score is not None else ens.clips[0].thresholds["en"]
    )
    pool = tables.read("sft_pool").where(F.col("status") == "ok")
    pool = pool.select(
        "pool_id",
        F.coalesce("image_sha256", "pool_id").alias("image_sha256"),
        "image_ref",
        F.when(F.col("text_detector").isNotNull(), F.col("text_score")).alias("text_score"),
    )
    scored = (
        tables.read("dpo_candidates")
        .where((F.col("status") == "success") & (F.col("scorer_id") == sid))
        .select(
            "candidate_id",
            "pool_id",
            "template",
            "prompt",
            "response",
            "model_id",
            "clip_scores",
            "score_chunks",
        )
        .join(pool, "pool_id")
    )
    stats = pool_stats(scored)
    if not stats:
        return StageResult(
            "dpo_select", 0, 0, {}, time.time() - t0, {"scorer_id": sid, "scored": 0}
        )
    schema = T.StructType(
        [
            *spark_schema("dpo_pairs", PAIR_COLUMNS).fields,
            T.StructField("removed_by", T.StringType()),
        ]
    )
    evaluated = (
        scored.groupBy("image_sha256")
        .applyInPandas(
            _select_groups(sel, min_chosen, stats, s.normalize, ens.model_ids[0], s.text_threshold),
            schema,
        )
        .persist()
    )
    try:
        counts = {
            (r["removed_by"] or "kept"): int(r["count"])
            for r in evaluated.groupBy("removed_by").count().collect()
        }
        kept = (
            evaluated.where(F.col("removed_by").isNull())
            .drop("removed_by")
            .withColumn("selection", F.lit(sel.name))
            .withColumn("scorer_id", F.lit(sid))
            .withColumn("selected_at", F.current_timestamp())
        )
        metrics = tables.replace(kept, "dpo_pairs", scope={"selection": sel.name})
    finally:
        evaluated.unpersist()
    considered = sum(counts.values())
    by_status = {"kept": counts.get("kept", 0)}
    by_status.update({f"removed_{r}": counts[r] for r in RULES if counts.get(r)})
    images = scored.select("image_sha256").distinct().count()
    return StageResult(
        "dpo_select",
        rows_in=considered,
        rows_out=by_status["kept"],
        by_status=by_status,
        seconds=time.time() - t0,
        notes={
            "selection": sel.name,
            "scorer_id": sid,
            "images": images,
            "min_chosen_score": round(float(min_chosen), 4),
            "pairs_inserted": metrics["num_inserted_rows"],
            "pairs_deleted": metrics["num_deleted_rows"],
        },
    )
