"""Soft Cap Sampling and Hard Cap Sampling (FLYT paper, Shechter & Carmon 2025).

SCS: in rounds, draw `round_size` distinct samples without replacement from
softmax(logits) (Gumbel-top-k, which is exact sampling without replacement), then lower
each drawn sample's logit by `alpha`; stop at N draws. A sample can be drawn in many
rounds, so the result carries a `repeat` count, and a high score buys repeats at a
diminishing rate. HCS: the same rounds without the logit decrease, but a sample drawn
`cap` times leaves the pool.

Driver memory: the sampler holds one float64 logit and one int32 count per candidate
(12 bytes/row; 5M rows = 60 MB, the `curate.sampler_max_rows` guard). The pool is first
reduced on the cluster (null scores dropped; optionally a pre-filter), sorted by sample_id
for determinism, and streamed to the driver with toLocalIterator, never a full collect of
wide rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def _rounds(m: int, n: int, round_size: int | None) -> int:
    return max(1, min(m, round_size or max(1, m // 100)))


def soft_cap_counts(
    logits: np.ndarray, n: int, alpha: float, seed: int, round_size: int | None = None
) -> np.ndarray:
    """Repeat count per sample after `n` SCS draws (deterministic for a seed)."""
    z = np.asarray(logits, np.float64).copy()
    counts = np.zeros(len(z), np.int32)
    if len(z) == 0 or n <= 0:
        return counts
    rng = np.random.default_rng(seed)
    r = _rounds(len(z), n, round_size)
    left = n
    while left > 0:
        k = min(r, left)
        g = z + rng.gumbel(size=len(z))
        idx = np.argpartition(-g, k - 1)[:k]
        counts[idx] += 1
        z[idx] -= alpha
        left -= k
    return counts


def hard_cap_counts(
    logits: np.ndarray, n: int, cap: int, seed: int, round_size: int | None = None
) -> np.ndarray:
    """Repeat count per sample after `n` draws from softmax(logits), at most `cap` each."""
    z = np.asarray(logits, np.float64).copy()
    counts = np.zeros(len(z), np.int32)
    n = min(n, len(z) * cap)
    rng = np.random.default_rng(seed)
    r = _rounds(len(z), n, round_size)
    left = n
    while left > 0:
        alive = np.flatnonzero(counts < cap)
        k = min(r, left, len(alive))
        g = z[alive] + rng.gumbel(size=len(alive))
        idx = alive[np.argpartition(-g, k - 1)[:k]]
        counts[idx] += 1
        left -= k
    return counts


def _scores(pool: DataFrame, col: str, max_rows: int) -> tuple[list[str], np.ndarray]:
    df = pool.where(F.col(col).isNotNull()).select("sample_id", F.col(col).cast("double"))
    df = df.orderBy("sample_id")
    ids, vals = [], []
    for row in df.toLocalIterator():
        ids.append(row[0])
        vals.append(row[1])
        if len(ids) > max_rows:
            raise ValueError(
                f"sampler pool exceeds curate.sampler_max_rows={max_rows}; pre-filter the "
                "pool (params.within) or raise the limit (12 bytes/row on the driver)"
            )
    return ids, np.asarray(vals, np.float64)


def _to_subset(spark, ids: list[str], counts: np.ndarray) -> DataFrame:
    rows = [(i, int(c)) for i, c in zip(ids, counts, strict=False) if c > 0]
    return spark.createDataFrame(rows, "sample_id string, repeat int")


def _sampler_inputs(pool: DataFrame, params: dict[str, Any], ctx):
    """What both samplers read: ids, temperature-scaled logits, draws, seed, round size."""
    cur = ctx.cfg.curate
    ids, z = _scores(pool, params.get("column", "mflyt_score"), cur.sampler_max_rows)
    n = int(params.get("n") or cur.sample_size or len(ids))
    z = z / float(params.get("temperature", 1.0))
    return ids, z, n, int(params.get("seed", cur.seed)), params.get("round_size")


def soft_cap(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    ids, z, n, seed, round_size = _sampler_inputs(pool, params, ctx)
    alpha = float(params.get("alpha", ctx.cfg.curate.scs_alpha))
    counts = soft_cap_counts(z, n, alpha, seed, round_size)
    ctx.note(f"{ctx.name}_unique", int((counts > 0).sum()))
    return _to_subset(pool.sparkSession, ids, counts)


def hard_cap(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    ids, z, n, seed, round_size = _sampler_inputs(pool, params, ctx)
    cap = int(params.get("cap", ctx.cfg.curate.hard_cap))
    counts = hard_cap_counts(z, n, cap, seed, round_size)
    return _to_subset(pool.sparkSession, ids, counts)
