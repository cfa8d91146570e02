"""The curate stage: materialise the configured named filters as subsets.

    run(spark, cfg, tables, filters=None, targets=None) -> StageResult

For each name in `filters` (default cfg.curate.filters), in order: scorer kinds (flyt,
mflyt, dedup_size) compute and upsert their score column into `scores`; every other name replaces its
rows in `subsets` (idempotent; see subsets.write_subset). A filter that fails is reported
with status `failed` and its error in notes; the others still run.
"""

from __future__ import annotations

import time
from typing import Any

from pyspark.sql import SparkSession

from laion_spark.config import Config
from laion_spark.curate.pool import build_pool, pool_model_id
from laion_spark.curate.registry import (
    NEEDS_EMBEDDINGS,
    SCORER_KINDS,
    FilterContext,
    definition,
    select,
)
from laion_spark.curate.subsets import read_subset, write_subset
from laion_spark.stage import StageResult
from laion_spark.tables import Tables


def _needs_embeddings(cfg: Config, names: list[str], seen: set[str] | None = None) -> bool:
    seen = seen or set()
    for n in names:
        if n in seen:
            continue
        seen.add(n)
        d = definition(cfg, n)
        if d["kind"] in NEEDS_EMBEDDINGS:
            return True
        if _needs_embeddings(
            cfg, list(d.get("of") or []) + ([d["within"]] if d.get("within") else []), seen
        ):
            return True
    return False


def run(
    spark: SparkSession,
    cfg: Config,
    tables: Tables,
    filters: list[str] | None = None,
    targets: dict[str, Any] | None = None,
) -> StageResult:
    from laion_spark.curate.dedup import dedup_size
    from laion_spark.curate.flyt_job import run_scorer

    t0 = time.time()
    names = list(filters or cfg.curate.filters)
    for n in names:
        definition(cfg, n)  # fail fast on unknown names, before any work
    model_id = pool_model_id(tables, cfg)
    with_emb = _needs_embeddings(cfg, names)
    pool = build_pool(tables, cfg, with_embeddings=with_emb, model_id=model_id)
    rows_in = pool.count()
    result = StageResult("curate", rows_in=rows_in)
    # one context for the run: a subset used by several names (intersections) is computed once
    ctx = FilterContext(cfg, tables, pool, model_id=model_id, targets=dict(targets or {}))
    seconds: dict[str, float] = {}  # per name: where the stage's time goes
    for name in names:
        t1 = time.time()
        try:
            d = definition(cfg, name)
            if d["kind"] in SCORER_KINDS:
                ctx.name = name
                if d["kind"] == "dedup_size":
                    scores = dedup_size(pool, d, ctx)
                else:
                    _, scores = run_scorer(tables, pool, d["kind"], d, ctx)
                tables.upsert(scores, "scores")
                # the pool must see the new score column for later names
                pool = build_pool(tables, cfg, with_embeddings=with_emb, model_id=model_id)
                ctx.pool, ctx._cache = pool, {}
                result.by_status[f"scored:{name}"] = rows_in
            else:
                n = write_subset(tables, name, select(ctx, name))
                # later names built on this one read the written rows, not a recomputation
                ctx._cache[name] = read_subset(tables, name)
                result.by_status[name] = n
                result.rows_out += n
        except Exception as e:  # one bad filter must not lose the others' work
            result.by_status[f"failed:{name}"] = 1
            ctx.note(f"{name}_error", f"{type(e).__name__}: {e}"[:500])
        seconds[name] = round(time.time() - t1, 2)
    ctx.note("seconds_by_filter", seconds)
    result.notes.update(ctx.notes)
    result.seconds = time.time() - t0
    return result
