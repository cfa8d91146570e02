"""The parts of mini-DataComp that need no Spark: the world (pool, evaluation and task
sets, cached features), the scorer CLIPs and score heads, the students, and the analysis
of a selection. run.py adds the Delta tables and the curate stage.

Everything is deterministic for a `Sizes` and a data seed: the same arguments give the same
pool, scorers, scores, students and table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks.minidatacomp import features as FE
from benchmarks.minidatacomp import pool as P
from benchmarks.minidatacomp import student as S


@dataclass
class Sizes:
    pool: int = 24_000
    samples_seen: int = 72_000  # every student, every method (3 passes over the pool)
    eval_images: int = 2_000  # balanced zero-shot classification images (4 tasks)
    eval_pairs: int = 1_000  # balanced retrieval pairs
    task_images: int = 2_000  # FLYT downstream training set / image-based target
    scorer_pairs: int = 30_000  # separate clean pairs the scorer CLIPs learn from
    scorer_seen: int = 300_000
    head_images: int = 1_500  # per class, for the punsafe/pwatermark/aesthetic heads
    batch: int = 128

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(600, 3_000, 200, 100, 200, 1_000, 6_000, 100, 64)


@dataclass
class World:
    sizes: Sizes
    pool: P.Pool
    feats: np.ndarray  # standardised frozen features of the pool pictures
    tokens: torch.Tensor
    ev: S.EvalSet
    eval_shapes: np.ndarray  # shape index per classification image (tail analysis)
    scorer_l: S.TwoTower
    scorer_b: S.TwoTower
    emb_img: np.ndarray  # scorer L embeddings of the pool (what the product stores)
    emb_txt: np.ndarray
    sim_l: np.ndarray
    sim_b: np.ndarray
    flyt_tasks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # in scorer L space
    task_img: np.ndarray  # scorer L image embeddings of the task images
    head_sets: dict[str, tuple[np.ndarray, np.ndarray]]  # kind -> (x, y) for heads
    seconds: dict[str, float] = field(default_factory=dict)


def caption_quality(text: str) -> float:
    """Share of whitespace tokens that are plain words of >= 2 letters (file names,
    numbers and fragments score 0): a generic, model-free caption quality."""
    toks = text.split()
    if not toks:
        return 0.0
    good = sum(1 for t in toks if t.strip(",.").isalpha() and len(t.strip(",.")) >= 2)
    return good / len(toks)


def build_world(sizes: Sizes, seed: int = 0) -> World:
    t = {"start": time.time()}
    pool = P.make_pool(sizes.pool, seed=seed)
    ev_set = P.labelled(sizes.eval_images, 903 + seed, balanced=True)
    ret_set = P.labelled(sizes.eval_pairs, 904 + seed, balanced=True)
    task_set = P.labelled(sizes.task_images, 901 + seed, balanced=True)
    # the scorers' own training data: clean pairs from the pool's (long-tailed) distribution
    sc_set = P.labelled(sizes.scorer_pairs, 77 + seed, balanced=False)
    t["render"] = time.time()
    raw = FE.featurise(pool.pixels)
    std = FE.Standardiser(raw)
    feats = std(raw)
    f_ev, f_ret = std(FE.featurise(ev_set.pixels)), std(FE.featurise(ret_set.pixels))
    f_task, f_sc = std(FE.featurise(task_set.pixels)), std(FE.featurise(sc_set.pixels))
    t["featurise"] = time.time()
    ev = S.EvalSet(
        f_ev,
        {k: P.task_labels(ev_set.attrs, k) for k in P.TASKS},
        {k: P.class_prompts(k) for k in P.TASKS},
        f_ret,
        ret_set.captions,
    )
    # two "pretrained" CLIPs (DataComp's L/14 and B/32 stand-ins): bigger/longer and smaller
    sc_tok = S.tokenize(sc_set.captions)
    scorer_l = S.train(
        f_sc, sc_tok, None, S.TrainSpec(sizes.scorer_seen, sizes.batch, dim=64), seed=1001
    )
    n_b = max(1, len(f_sc) // 3)
    scorer_b = S.train(
        f_sc[:n_b],
        sc_tok[:n_b],
        None,
        S.TrainSpec(sizes.scorer_seen // 3, sizes.batch, dim=32, hidden=128),
        seed=1002,
    )
    t["scorers"] = time.time()
    zi, zt = S.embed(scorer_l, feats, pool.texts)
    bi, bt = S.embed(scorer_b, feats, pool.texts)
    # FLYT's downstream tasks: the *training* sets of the four zero-shot tasks (disjoint
    # pictures from the evaluation ones), class prompts encoded by scorer L's text tower
    task_img, _ = S.embed(scorer_l, f_task, [])
    flyt_tasks = [
        (task_img, P.task_labels(task_set.attrs, k), S.class_embeddings(scorer_l, ev.prompts[k]))
        for k in P.TASKS
    ]
    heads = _head_sets(sizes, seed, std, scorer_l)
    t["embed"] = time.time()
    secs = {
        k: round(t[k] - t0, 1) for k, t0 in zip(list(t)[1:], list(t.values())[:-1], strict=True)
    }
    return World(
        sizes,
        pool,
        feats,
        S.tokenize(pool.texts),
        ev,
        np.array([P.SHAPES.index(a.shape) for a in ev_set.attrs]),
        scorer_l,
        scorer_b,
        zi,
        zt,
        (zi * zt).sum(1),
        (bi * bt).sum(1),
        flyt_tasks,
        task_img,
        heads,
        secs,
    )


def _head_sets(sizes: Sizes, seed: int, std, scorer) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Labelled scorer-L image embeddings for the product's punsafe / pwatermark /
    aesthetic heads, from pictures generated apart from the pool."""
    n = sizes.head_images
    normal = P.labelled(n, 501 + seed, balanced=False).pixels
    rng = np.random.default_rng(502 + seed)
    import random as _random

    prng = _random.Random(503 + seed)
    textures = np.stack([P._texture(prng, rng) for _ in range(n // 3)])
    unsafe = P.flagged(n, 504 + seed, "unsafe")
    marked = P.flagged(n, 505 + seed, "watermark")

    def emb(px: np.ndarray) -> np.ndarray:
        return S.embed(scorer, std(FE.featurise(px)), [])[0]

    e_norm, e_tex, e_uns, e_wm = emb(normal), emb(textures), emb(unsafe), emb(marked)
    neg = np.concatenate([e_norm, e_tex])
    aes_px = np.concatenate([normal, textures, marked])
    return {
        "nsfw": (np.concatenate([e_uns, neg]), np.r_[np.ones(len(e_uns)), np.zeros(len(neg))]),
        "watermark": (
            np.concatenate([e_wm, e_norm]),
            np.r_[np.ones(len(e_wm)), np.zeros(len(e_norm))],
        ),
        "aesthetic": (np.concatenate([e_norm, e_tex, e_wm]), P.aesthetic_rating(aes_px)),
    }


@dataclass
class Selection:
    """A method's training multiset over pool rows."""

    idx: np.ndarray  # pool row numbers (unique)
    repeat: np.ndarray  # draws per row

    @property
    def draws(self) -> int:
        return int(self.repeat.sum())


def train_students(world: World, sel: Selection, seeds: list[int]) -> dict[str, np.ndarray]:
    """Per-item outcomes [seed, item] per metric (see student.evaluate)."""
    spec = S.TrainSpec(world.sizes.samples_seen, world.sizes.batch)
    out: dict[str, list[np.ndarray]] = {}
    for seed in seeds:
        m = S.train(world.feats[sel.idx], world.tokens[sel.idx], sel.repeat, spec, seed)
        for k, v in S.evaluate(m, world.ev).items():
            out.setdefault(k, []).append(v)
    return {k: np.stack(v) for k, v in out.items()}


def describe(world: World, sel: Selection) -> dict[str, float]:
    """Where a selection's draws go: noise kinds, rare shapes, repeats."""
    kinds = np.array(world.pool.kinds)[sel.idx]
    w = sel.repeat / max(1, sel.draws)
    tail = np.array([a is not None and a.shape in P.TAIL_SHAPES for a in world.pool.attrs], bool)[
        sel.idx
    ]
    pool_tail = np.mean([a is not None and a.shape in P.TAIL_SHAPES for a in world.pool.attrs])
    d = {
        "unique": int(len(sel.idx)),
        "draws": sel.draws,
        "max_repeat": int(sel.repeat.max()) if len(sel.idx) else 0,
        "good_share": float(w[np.isin(kinds, ["clean", "partial", "watermark"])].sum()),
        "tail_vs_pool": float(w[tail].sum() / pool_tail) if pool_tail else float("nan"),
    }
    for k in P.NOISE:
        d[f"share_{k}"] = float(w[kinds == k].sum())
    return d


def tail_accuracy(world: World, outcomes: dict[str, np.ndarray]) -> np.ndarray:
    """Per-seed shape accuracy on the four rarest shapes only."""
    tail = np.isin(world.eval_shapes, [P.SHAPES.index(s) for s in P.TAIL_SHAPES])
    return outcomes["shape"][:, tail].mean(1)
