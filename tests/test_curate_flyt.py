"""FLYT hypergradient, M-FLYT, Soft/Hard Cap Sampling and SemDeDup."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from laion_spark.curate import flyt
from laion_spark.curate.dedup import semdedup_keep
from laion_spark.curate.sampling import hard_cap_counts, soft_cap_counts
from laion_spark.curate.settings import FlytSettings


def _tiny_problem(seed=0, d=4, b=6, classes=3, m=9):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, d, generator=g, dtype=torch.float64)
    txt = img + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)
    task_img = torch.randn(m, d, generator=g, dtype=torch.float64)
    labels = torch.arange(m) % classes
    class_txt = torch.randn(classes, d, generator=g, dtype=torch.float64)
    return img, txt, (task_img, labels, class_txt)


def test_flyt_hypergradient_matches_finite_differences():
    torch.manual_seed(0)
    img, txt, task = _tiny_problem()
    feats = torch.cat([img, txt], 1)
    head = flyt.ScoreHead(feats.shape[1], hidden=3, dtype=torch.float64)
    ref = flyt.ReferenceCLIP(img.shape[1], txt.shape[1], dtype=torch.float64)
    # a non-identity reference so every term of the inner step matters
    with torch.no_grad():
        ref.img.weight.add_(0.3 * torch.randn_like(ref.img.weight))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in ref.named_parameters()}
    lr, temp = 0.5, 0.2

    def loss_fn():
        return flyt.outer_loss(head, ref, params, feats, img, txt, task, lr, temp)[0]

    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(head.parameters()))
    h = 1e-6
    checked = 0
    for p, g in zip(head.parameters(), grads, strict=True):
        flat, gflat = p.data.view(-1), g.view(-1)  # .data: edits bypass autograd
        for i in range(flat.numel()):
            old = flat[i].item()
            # the parameter is changed in place; the loss itself needs autograd (inner step)
            flat[i] = old + h
            up = loss_fn().item()
            flat[i] = old - h
            down = loss_fn().item()
            flat[i] = old
            fd = (up - down) / (2 * h)
            assert abs(fd - gflat[i].item()) <= 1e-6 + 1e-4 * abs(fd), (i, fd, gflat[i].item())
            checked += 1
    assert checked == sum(p.numel() for p in head.parameters())
    assert max(float(g.abs().max()) for g in grads) > 1e-4  # the gradient is not trivially 0


def _pool(n=256, d=8, seed=0):
    """Half the pairs matched (text ~ image), half mismatched (random text)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(4, d))
    lab = rng.integers(0, 4, n)
    img = protos[lab] + 0.3 * rng.normal(size=(n, d))
    txt = protos[lab] + 0.3 * rng.normal(size=(n, d))
    bad = np.arange(n) % 2 == 1
    txt[bad] = protos[(lab[bad] + 1 + rng.integers(0, 3, bad.sum())) % 4] + 0.3 * rng.normal(
        size=(bad.sum(), d)
    )
    t_lab = rng.integers(0, 4, 64)
    t_img = protos[t_lab] + 0.3 * rng.normal(size=(64, d))
    return img, txt, bad, (t_img, t_lab, protos)


def test_flyt_and_mflyt_learn_to_prefer_matched_pairs():
    img, txt, bad, task = _pool()
    s = FlytSettings(steps=40, batch_size=64, lr=1e-2, hidden=16, inner_lr=0.5, temperature=0.1)
    model = flyt.train_flyt(img, txt, *task, s, seed=0)
    sc = model(np.concatenate([img, txt], 1))
    assert sc[~bad].mean() > sc[bad].mean() + 0.5 * sc.std()
    # M-FLYT mixing one useful column (cosine) and one noise column: learns to trust cosine
    cos = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
    noise = np.random.default_rng(1).normal(size=len(cos))
    cols = np.stack([cos, noise], 1)
    cols[3, 1] = np.nan  # missing values are imputed with the column mean
    m = flyt.train_mflyt(cols, ["similarity", "noise"], img, txt, *task, s, seed=0)
    ms = m(cols)
    assert m.layers[0][0][0][0] > 0  # the cosine column gets a positive weight
    assert np.isfinite(ms).all() and ms[~bad].mean() > ms[bad].mean()


def test_soft_cap_sampling_is_deterministic_and_repeats():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=500) * 2
    a = soft_cap_counts(logits, 1500, alpha=0.2, seed=7, round_size=50)
    b = soft_cap_counts(logits, 1500, alpha=0.2, seed=7, round_size=50)
    c = soft_cap_counts(logits, 1500, alpha=0.2, seed=8, round_size=50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.sum() == 1500 and a.max() > 1  # exactly N draws, samples repeat
    assert a.max() <= 1500 // 50  # never twice in one round (draws without replacement)
    # higher logits get more repeats; a larger alpha caps them harder (softer spread)
    top, bottom = np.argsort(-logits)[:50], np.argsort(logits)[:50]
    assert a[top].mean() > a[bottom].mean()
    hard = soft_cap_counts(logits, 1500, alpha=2.0, seed=7, round_size=50)
    assert hard.max() < a.max() and (hard > 0).sum() > (a > 0).sum()


def test_hard_cap_sampling_respects_cap():
    logits = np.linspace(-2, 2, 200)
    c = hard_cap_counts(logits, 300, cap=2, seed=0, round_size=20)
    assert c.sum() == 300 and c.max() == 2
    np.testing.assert_array_equal(c, hard_cap_counts(logits, 300, cap=2, seed=0, round_size=20))
    assert hard_cap_counts(logits, 10_000, cap=1, seed=0).sum() == 200  # N capped by the pool


def test_semdedup_keep_greedy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    near = x[:10] + 0.01 * rng.normal(size=(10, 16))
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    allx = np.concatenate([x, near]).astype(np.float32)
    keep = semdedup_keep(allx, eps=0.01, block=7)  # blocks smaller than the data
    assert keep[:50].all() and not keep[50:].any()
    assert semdedup_keep(allx, eps=0.0).sum() == 60  # eps 0: only exact copies would go


def test_semdedup_stage_removes_planted_near_duplicates(spark, tables, make_cfg):
    from laion_spark.curate.stage import run
    from laion_spark.curate.subsets import read_subset
    from laion_spark.ids import sample_id

    rng = np.random.default_rng(3)
    n, d = 120, 16
    base = rng.normal(size=(n, d))
    dup_of = rng.choice(n, 30, replace=False)
    dups = base[dup_of] + 0.02 * rng.normal(size=(30, d))
    emb = np.concatenate([base, dups])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    urls = [f"http://s.example/{i}.jpg" for i in range(len(emb))]
    ids = [sample_id(u, f"caption {i}") for i, u in enumerate(urls)]
    cand = pd.DataFrame(
        {"sample_id": ids, "url": urls, "text": [f"caption {i}" for i in range(len(emb))]}
    )
    tables.upsert(spark.createDataFrame(cand), "candidates")
    e = spark.createDataFrame(
        [
            (s, "m", [float(v) for v in row], [float(v) for v in row], 0.3, "success")
            for s, row in zip(ids, emb, strict=True)
        ],
        "sample_id string, model_id string, image_embedding array<float>, text_embedding array<float>, "
        "similarity float, status string",
    )
    tables.upsert(e, "embeddings")
    cfg = make_cfg(["curate.semdedup_eps=0.02", "curate.semdedup_clusters=4"])
    res = run(spark, cfg, tables, filters=["semdedup"])
    kept = {r.sample_id for r in read_subset(tables, "semdedup").collect()}
    # each planted pair keeps exactly one member; every other sample stays
    pairs = [(ids[int(j)], ids[n + i]) for i, j in enumerate(dup_of)]
    assert all((a in kept) != (b in kept) for a, b in pairs)
    assert len(kept) == n
    assert res.notes["semdedup_kept_fraction"] == round(n / (n + 30), 4)


def test_near_duplicate_counts_size_each_planted_group():
    from laion_spark.curate.dedup import near_duplicate_counts

    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 16))
    groups = [0] * 6 + [1] * 3 + list(range(2, 40))  # sample 0 six times, sample 1 three times
    x = base[groups] + 0.005 * rng.normal(size=(len(groups), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = near_duplicate_counts(x.astype(np.float32), eps=0.02, block=7)
    want = np.array([groups.count(g) for g in groups])
    np.testing.assert_array_equal(got, want)
    # eps 0: nothing is a near-duplicate of anything else, every row counts itself once
    assert (near_duplicate_counts(x.astype(np.float32), eps=0.0) == 1).all()


def test_flyt_early_stopping_keeps_the_best_head_and_takes_several_tasks():
    img, txt, bad, (t_img, t_lab, protos) = _pool()
    # two downstream tasks: the 4-way prototype task and a 2-way task over its halves
    tasks = [(t_img, t_lab, protos), (t_img, t_lab % 2, protos[:2])]
    s = FlytSettings(
        steps=400, batch_size=64, lr=3e-2, hidden=16, inner_lr=0.5, temperature=0.1,
        patience=3, eval_every=10, val_batches=4,
    )  # fmt: skip
    model = flyt.train_flyt_tasks(img, txt, tasks, s, seed=0)
    info = model.info
    gains = [g for _, g in info["evals"]]
    assert info["best_val_gain"] == max(gains)
    assert info["best_step"] == info["evals"][int(np.argmax(gains))][0]
    # stopped by patience: exactly `patience` evaluations after the best one
    if info["steps"] < s.steps:
        assert len(gains) - 1 - int(np.argmax(gains)) == s.patience
    assert max(gains) > 0  # the learned weights beat uniform weights on held-out images
    sc = model(np.concatenate([img, txt], 1))
    assert sc[~bad].mean() > sc[bad].mean() + 0.5 * sc.std()
    # same seed, same head
    again = flyt.train_flyt_tasks(img, txt, tasks, s, seed=0)
    np.testing.assert_array_equal(again(np.concatenate([img, txt], 1)), sc)
