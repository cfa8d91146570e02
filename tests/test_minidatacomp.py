"""The mini-DataComp harness is deterministic: same seed, same world, same table.

Tiny sizes, no Spark: the selections come from the product's pure curate functions
(DataComp's top-k rule written out, laion_spark.curate.sampling.soft_cap_counts); the
Spark stage's own determinism (rows sorted by sample_id before sampling and FLYT
training) is covered by the curate tests.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.minidatacomp import harness as H
from benchmarks.minidatacomp import pool as P
from benchmarks.minidatacomp import stats as ST
from benchmarks.minidatacomp.run import METRICS, evaluate_all
from laion_spark.curate.sampling import soft_cap_counts

SIZES = H.Sizes(
    pool=300,
    samples_seen=960,
    eval_images=96,
    eval_pairs=48,
    task_images=48,
    scorer_pairs=300,
    scorer_seen=1_200,
    head_images=24,
    batch=32,
)


def _selections(world: H.World) -> dict[str, H.Selection]:
    n = len(world.sim_l)
    everything = H.Selection(np.arange(n), np.ones(n, np.int64))
    # DataComp's get_threshold: the value at rank int(N * 0.3) of the descending sort
    t = -np.sort(-world.sim_l)[int(n * 0.3)]
    top = np.flatnonzero(world.sim_l >= t)
    counts = soft_cap_counts(world.sim_l / 0.05, SIZES.samples_seen, alpha=0.2, seed=0)
    scs = np.flatnonzero(counts)
    return {
        "no_filter": everything,
        "clip_top30": H.Selection(top, np.ones(len(top), np.int64)),
        "scs": H.Selection(scs, counts[scs].astype(np.int64)),
    }


def _table(seeds: list[int], world: H.World | None = None):
    torch.set_num_threads(1)
    world = world or H.build_world(SIZES, seed=0)
    results = evaluate_all(world, _selections(world), seeds, log=lambda *a: None)
    n_items = {m: results["no_filter"][m].shape[1] for m in METRICS}
    boot = ST.Bootstrap(len(seeds), n_items, reps=200)
    table, _ = ST.summary(results, METRICS, boot)
    diff = ST.paired(results, "scs", "clip_top30", METRICS, boot)
    return world, results, table, diff


def test_same_seed_same_table_and_other_seed_differs():
    w1, r1, t1, d1 = _table([0, 1])
    w2, r2, t2, d2 = _table([0, 1])
    # the world: pool, cached features, scorer similarities
    assert w1.pool.texts == w2.pool.texts and w1.pool.kinds == w2.pool.kinds
    np.testing.assert_array_equal(w1.feats, w2.feats)
    np.testing.assert_array_equal(w1.sim_l, w2.sim_l)
    # the table and the paired differences, to the last bit
    assert t1 == t2
    assert d1 == d2
    for name in r1:
        for m in r1[name]:
            np.testing.assert_array_equal(r1[name][m], r2[name][m])
    # a different student seed trains a different student (the test can fail)
    _, r3, _, _ = _table([2, 3], world=w1)
    assert any(not np.array_equal(r1["no_filter"][m], r3["no_filter"][m]) for m in METRICS)
    # intervals bracket the means; the selections are what they claim
    for row in t1.values():
        for mean, lo, hi in row.values():
            assert lo - 1e-9 <= mean <= hi + 1e-9
    sel = _selections(w1)
    assert sel["scs"].draws == SIZES.samples_seen and sel["scs"].repeat.max() > 1
    assert len(sel["clip_top30"].idx) >= int(0.3 * SIZES.pool)


def test_pool_noise_is_recorded_and_in_proportion():
    pool = P.make_pool(2000, seed=3)
    kinds = np.array(pool.kinds)
    for kind, share in P.NOISE.items():
        assert abs((kinds == kind).mean() - share) < 0.04, kind
    # off-topic and unsafe pictures show nothing; near-duplicates point at an earlier row
    for i, k in enumerate(pool.kinds):
        if k in ("off_topic", "unsafe"):
            assert pool.attrs[i] is None
        if k == "near_duplicate":
            assert 0 <= pool.dup_of[i] < i
            assert np.abs(pool.pixels[i] - pool.pixels[pool.dup_of[i]]).mean() < 0.05
    # the long tail: the rarest shape is far rarer than the commonest
    shapes = [a.shape for a in pool.attrs if a is not None]
    assert shapes.count(P.SHAPE_RANK[0]) > 8 * shapes.count(P.SHAPE_RANK[-1])
