"""Paired bootstrap over seeds and evaluation items.

Each method has, per metric, outcomes [seed, item] (1/0 correctness or hit@k). The seeds
are paired across methods (same initial student, same shuffling generator) and the items
are the same pictures/queries for every method, so a bootstrap replicate draws ONE
resample of seeds and ONE resample of items per metric and applies it to both methods of
a difference. That captures both training noise (seeds) and test-set noise (items).

The replicate weights are drawn once per (metric, replicate) from a fixed generator, so
the same outcomes give the same intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Bootstrap:
    n_seeds: int
    n_items: dict[str, int]  # metric -> items
    reps: int = 2000
    seed: int = 0

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        # seed resampling: counts per seed / n_seeds, [reps, n_seeds]
        s = rng.integers(0, self.n_seeds, (self.reps, self.n_seeds))
        self.seed_w = np.stack([np.bincount(r, minlength=self.n_seeds) for r in s]) / self.n_seeds
        self.item_w: dict[str, np.ndarray] = {}
        for m, n in self.n_items.items():
            i = rng.integers(0, n, (self.reps, n))
            # [n, reps]: item weights per replicate, columns sum to 1
            w = np.zeros((n, self.reps), np.float32)
            for r in range(self.reps):
                w[:, r] = np.bincount(i[r], minlength=n) / n
            self.item_w[m] = w

    def replicates(self, outcomes: np.ndarray, metric: str) -> np.ndarray:
        """[reps] bootstrap values of the metric mean for outcomes [seed, item]."""
        per_seed = outcomes.astype(np.float32) @ self.item_w[metric]  # [seed, reps]
        return (self.seed_w * per_seed.T).sum(1)


def ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def summary(
    results: dict[str, dict[str, np.ndarray]], metrics: list[str], boot: Bootstrap
) -> tuple[dict[str, dict[str, tuple[float, float, float]]], dict[str, np.ndarray]]:
    """Per method and metric (plus `avg`, the mean of `metrics`): (mean, lo, hi); and the
    bootstrap replicates of `avg` per method, for paired differences."""
    table: dict[str, dict[str, tuple[float, float, float]]] = {}
    avg_reps: dict[str, np.ndarray] = {}
    for name, res in results.items():
        row = {}
        reps_all = []
        for m in metrics:
            r = boot.replicates(res[m], m)
            reps_all.append(r)
            row[m] = (float(res[m].mean()), *ci(r))
        avg = np.mean(reps_all, 0)
        point = float(np.mean([res[m].mean() for m in metrics]))
        row["avg"] = (point, *ci(avg))
        table[name] = row
        avg_reps[name] = avg
    return table, avg_reps


def paired(
    results: dict[str, dict[str, np.ndarray]],
    a: str,
    b: str,
    metrics: list[str],
    boot: Bootstrap,
) -> dict[str, tuple[float, float, float]]:
    """a - b per metric and for `avg`: (difference of means, CI lo, CI hi)."""
    out = {}
    diffs = []
    for m in metrics:
        d = boot.replicates(results[a][m], m) - boot.replicates(results[b][m], m)
        diffs.append(d)
        out[m] = (float(results[a][m].mean() - results[b][m].mean()), *ci(d))
    point = float(np.mean([results[a][m].mean() - results[b][m].mean() for m in metrics]))
    out["avg"] = (point, *ci(np.mean(diffs, 0)))
    return out
