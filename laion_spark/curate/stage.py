"""The curate stage: materialise the configured named filters as subsets.

    run(spark, cfg, tables, filters=None, targets=None) -> StageResult

For each name in `filters` (default cfg.curate.filters), in order: scorer kinds (flyt,
mflyt, dedup_size) compute and upsert their score column into `scores`; every other name's selection is
materialised, and at the end one MERGE replaces the rows of all of them in `subsets`
(idempotent; see subsets.replace_subsets). A filter that fails is reported
with status `failed` and its error in notes; the others still run.
"""

from __future__ import annotations

import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from laion_spark.config import Config
from laion_spark.curate.pool import build_pool, pool_model_id
from laion_spark.curate.registry import (
    NEEDS_EMBEDDINGS,
    SCORER_KINDS,
    FilterContext,
    definition,
    select,
)
from laion_spark.curate.subsets import replace_subsets, subset_rows
from laion_spark.stage import StageResult, inputs_digest, last_run_digest
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


# every table a filter can read, and the subsets it writes: their Delta versions after a
# run, with the settings, make the state digest a later run compares against
STATE_TABLES = ("candidates", "images", "embeddings", "scores", "subsets", "takedowns")


def state_digest(cfg: Config, tables: Tables, names: list[str], targets: dict[str, Any]) -> str:
    """Digest of what a run with these names would read and write: equal digests, equal work."""
    import dataclasses

    settings = {
        "names": names,
        "targets": targets,
        "curate": dataclasses.asdict(cfg.curate),
        "model": pool_model_id(tables, cfg),
    }
    return inputs_digest(tables, STATE_TABLES, settings)


def run(
    spark: SparkSession,
    cfg: Config,
    tables: Tables,
    filters: list[str] | None = None,
    targets: dict[str, Any] | None = None,
    force: bool = False,
) -> StageResult:
    """force: recompute even when nothing changed since the last curate run."""
    t0 = time.time()
    names = list(filters or cfg.curate.filters)
    for n in names:
        definition(cfg, n)  # fail fast on unknown names, before any work
    digest = state_digest(cfg, tables, names, dict(targets or {}))
    if not force and digest == last_run_digest(tables, "curate"):
        # the tables are as the last run left them and the settings are equal: the subsets
        # it wrote are what this run would write
        return StageResult(
            "curate",
            by_status={"up_to_date": len(names)},
            seconds=time.time() - t0,
            notes={"state_digest": digest, "skipped": "nothing changed since the last run"},
        )
    result = _run(spark, cfg, tables, names, targets, t0)
    if not any(k.startswith("failed:") for k in result.by_status):
        # digest of the state this run leaves (its own writes included)
        result.notes["state_digest"] = state_digest(cfg, tables, names, dict(targets or {}))
    return result


def _run(spark, cfg, tables, names, targets, t0) -> StageResult:
    from laion_spark.curate.dedup import dedup_size
    from laion_spark.curate.flyt_job import run_scorer

    model_id = pool_model_id(tables, cfg)
    with_emb = _needs_embeddings(cfg, names)

    def pool_view():
        # cached: every filter reads it (the joins over the input tables run once, not per
        # filter and per action); MEMORY_AND_DISK, so a pool larger than memory spills
        return build_pool(tables, cfg, with_embeddings=with_emb, model_id=model_id).persist()

    pool = pool_view()
    rows_in = pool.count()
    result = StageResult("curate", rows_in=rows_in)
    # one context for the run: a subset used by several names (intersections) is computed once
    ctx = FilterContext(cfg, tables, pool, model_id=model_id, targets=dict(targets or {}))
    seconds: dict[str, float] = {}  # per name: where the stage's time goes
    written: dict[str, DataFrame] = {}  # subset rows, all written in one MERGE at the end
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
                pool.unpersist()
                pool = pool_view()
                ctx.pool, ctx._cache = pool, {}
                result.by_status[f"scored:{name}"] = rows_in
            else:
                rows, n = subset_rows(name, select(ctx, name))
                written[name] = rows
                # later names built on this one read these rows, not a recomputation
                ctx._cache[name] = rows.select("sample_id", "repeat")
                result.by_status[name] = n
        except Exception as e:  # one bad filter must not lose the others' work
            result.by_status[f"failed:{name}"] = 1
            ctx.note(f"{name}_error", f"{type(e).__name__}: {e}"[:500])
        seconds[name] = round(time.time() - t1, 2)
    t1 = time.time()
    try:
        replace_subsets(tables, written)
        result.rows_out = sum(result.by_status[n] for n in written)
    except Exception as e:  # the selections were fine; the write was not
        for name in written:
            del result.by_status[name]
            result.by_status[f"failed:{name}"] = 1
        ctx.note("subsets_error", f"{type(e).__name__}: {e}"[:500])
    finally:
        pool.unpersist()
    if written:
        seconds["write_subsets"] = round(time.time() - t1, 2)
    ctx.note("seconds_by_filter", seconds)
    result.notes.update(ctx.notes)
    result.seconds = time.time() - t0
    return result
