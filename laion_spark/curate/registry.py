"""Named filters: kind registry, built-in names, and set combinators.

    sel = select(ctx, "basic")            # DataFrame[sample_id, repeat]

A name resolves to `{kind, ...params}` (built-in, overridden or added by
`curate.definitions`); `params.within: <name>` restricts the pool to another subset
first (e.g. CLIP top-30% computed among basic-filter survivors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.config import Config
from laion_spark.curate import dedup, image_based, rules, sampling
from laion_spark.tables import Tables

Filter = Callable[[DataFrame, dict[str, Any], Any], DataFrame]

KINDS: dict[str, Filter] = {
    "all": rules.everything,
    "clip_threshold": rules.clip_threshold,
    "clip_top": rules.clip_top,
    "basic": rules.basic,
    "text_based": rules.text_based,
    "safety": rules.safety,
    "language": rules.language,
    "exact_dedup": dedup.exact_dedup,
    "semdedup": dedup.semdedup,
    "image_based": image_based.image_based,
    "soft_cap": sampling.soft_cap,
    "hard_cap": sampling.hard_cap,
}
SET_KINDS = ("intersect", "union", "difference")
# kinds that compute score columns instead of subsets (see laion_spark.curate.flyt and
# dedup.dedup_size); the stage upserts them into `scores`
SCORER_KINDS = ("flyt", "mflyt", "dedup_size")
NEEDS_EMBEDDINGS = ("semdedup", "image_based", "flyt", "mflyt", "dedup_size")

BUILTIN: dict[str, dict[str, Any]] = {
    "no_filter": {"kind": "all"},
    "basic": {"kind": "basic"},
    "clip_threshold": {"kind": "clip_threshold"},
    # LAION-5B's CLIP filter (the subset the former clip_filter stage wrote)
    "clip_filter": {"kind": "clip_threshold"},
    "clip_top30": {"kind": "clip_top", "fraction": 0.3},
    "clip_l14_top30": {"kind": "clip_top", "column": "clip_l14_similarity_score", "fraction": 0.3},
    "clip_b32_top30": {"kind": "clip_top", "column": "clip_b32_similarity_score", "fraction": 0.3},
    "text_based": {"kind": "text_based"},
    "image_based": {"kind": "image_based"},
    "safety": {"kind": "safety"},
    "english": {"kind": "language", "languages": ["en"]},
    "exact_dedup": {"kind": "exact_dedup"},
    "semdedup": {"kind": "semdedup"},
    "flyt": {"kind": "flyt"},
    "mflyt": {"kind": "mflyt"},
    "dedup_size": {"kind": "dedup_size"},
    "flyt_scs": {"kind": "soft_cap", "column": "flyt_score"},
    "mflyt_scs": {"kind": "soft_cap", "column": "mflyt_score"},
    "mflyt_hcs": {"kind": "hard_cap", "column": "mflyt_score"},
    "basic_and_clip_top30": {"kind": "intersect", "of": ["basic", "clip_top30"]},
}


@dataclass
class FilterContext:
    cfg: Config
    tables: Tables | None
    pool: DataFrame
    model_id: str | None = None  # embeddings model behind the pool's `similarity`
    name: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    # programmatic target sets (name -> embedding matrix), e.g. for image_based
    targets: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, DataFrame] = field(default_factory=dict)

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value


def definition(cfg: Config, name: str) -> dict[str, Any]:
    """The `{kind, ...}` of a filter name (definitions override built-ins key by key)."""
    d = dict(BUILTIN.get(name, {}))
    d.update(cfg.curate.definitions.get(name, {}))
    if "kind" not in d:
        known = sorted(set(BUILTIN) | set(cfg.curate.definitions))
        raise KeyError(f"unknown curate filter {name!r}; known: {', '.join(known)}")
    kind = d["kind"]
    if kind not in KINDS and kind not in SET_KINDS and kind not in SCORER_KINDS:
        raise KeyError(f"filter {name!r}: unknown kind {kind!r}; kinds: {sorted(KINDS)}")
    return d


def _combine(kind: str, parts: list[DataFrame]) -> DataFrame:
    out = parts[0]
    for p in parts[1:]:
        if kind == "intersect":
            # a sample kept by every member; repeats: the smallest
            out = (
                out.alias("a")
                .join(p.alias("b"), "sample_id")
                .select("sample_id", F.least("a.repeat", "b.repeat").alias("repeat"))
            )
        elif kind == "union":
            out = out.unionByName(p).groupBy("sample_id").agg(F.max("repeat").alias("repeat"))
        else:  # difference: first minus the rest
            out = out.join(p.select("sample_id"), "sample_id", "left_anti")
    return out


def select(ctx: FilterContext, name: str, _stack: tuple[str, ...] = ()) -> DataFrame:
    """The subset a named filter keeps: DataFrame[sample_id, repeat]."""
    if name in _stack:
        raise ValueError(f"filter {name!r} refers to itself: {' -> '.join(_stack + (name,))}")
    if name in ctx._cache:
        return ctx._cache[name]
    d = definition(ctx.cfg, name)
    kind = d["kind"]
    if kind in SCORER_KINDS:
        raise ValueError(f"{name!r} computes scores (kind {kind}); run it as a stage filter")
    stack = _stack + (name,)
    if kind in SET_KINDS:
        members = list(d.get("of") or [])
        if not members:
            raise ValueError(f"filter {name!r} ({kind}) needs `of: [names]`")
        out = _combine(kind, [select(ctx, m, stack) for m in members])
    else:
        pool = ctx.pool
        if d.get("within"):
            pool = pool.join(select(ctx, d["within"], stack).select("sample_id"), "sample_id")
        prev, ctx.name = ctx.name, name
        out = KINDS[kind](pool, d, ctx)
        ctx.name = prev
    ctx._cache[name] = out
    return out
