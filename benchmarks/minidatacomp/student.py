"""The student CLIP the harness trains on each selection, the scorer CLIPs, and evaluation.

Image tower: MLP over the frozen random-conv features (features.py); text tower: mean of
hashed word embeddings + linear. Symmetric InfoNCE with a learnable temperature, Adam.
`train` runs for exactly `samples_seen` samples: the stream cycles through the selection's
multiset (a sample with repeat r appears r times per pass), reshuffled every pass with the
seed's generator; the seed also fixes the initial weights, so the same seed gives every
method the same initial student and the same shuffling generator (paired runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BUCKETS = 2048
MAX_WORDS = 12


def tokenize(texts: list[str]) -> torch.Tensor:
    """Words hashed into BUCKETS (a fixed polynomial hash, stable across runs); 0 = pad."""
    out = torch.zeros(len(texts), MAX_WORDS, dtype=torch.long)
    for i, t in enumerate(texts):
        for j, w in enumerate(re.findall(r"[^\W\d_]+", t.lower())[:MAX_WORDS]):
            h = 0
            for ch in w:
                h = (h * 131 + ord(ch)) % 1_000_003
            out[i, j] = 1 + h % (BUCKETS - 1)
    return out


class TwoTower(nn.Module):
    def __init__(self, d_in: int, dim: int = 64, hidden: int = 256, word_dim: int = 128):
        super().__init__()
        self.img = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.emb = nn.EmbeddingBag(BUCKETS, word_dim, mode="mean", padding_idx=0)
        self.txt = nn.Sequential(nn.Linear(word_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.img(x), dim=-1)

    def encode_text(self, tok: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.txt(self.emb(tok)), dim=-1)


@dataclass
class TrainSpec:
    samples_seen: int
    batch: int = 128
    lr: float = 2e-3
    dim: int = 64
    hidden: int = 256


def train(
    feats: np.ndarray,
    tokens: torch.Tensor,
    repeats: np.ndarray | None,
    spec: TrainSpec,
    seed: int,
) -> TwoTower:
    """Train a fresh student on rows of `feats`/`tokens` (repeat counts per row)."""
    torch.manual_seed(seed)
    model = TwoTower(feats.shape[1], spec.dim, spec.hidden)
    rng = np.random.default_rng(seed)
    idx_all = (
        np.arange(len(feats)) if repeats is None else np.repeat(np.arange(len(feats)), repeats)
    )
    x = torch.as_tensor(feats)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    steps = spec.samples_seen // spec.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1, anneal_strategy="cos"
    )
    order = np.zeros(0, np.int64)
    y = torch.arange(spec.batch)
    for _ in range(steps):
        if len(order) < spec.batch:
            order = np.concatenate([order, rng.permutation(idx_all)])
        b, order = order[: spec.batch], order[spec.batch :]
        bt = torch.as_tensor(b)
        zi, zt = model.encode_image(x[bt]), model.encode_text(tokens[bt])
        logits = model.logit_scale.exp().clamp(max=100) * zi @ zt.T
        loss = 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def embed(model: TwoTower, feats: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    zi = model.encode_image(torch.as_tensor(feats)).numpy()
    zt = model.encode_text(tokenize(texts)).numpy() if texts else np.zeros((0, zi.shape[1]))
    return zi, zt


@torch.no_grad()
def class_embeddings(model: TwoTower, prompts: dict[str, list[str]]) -> np.ndarray:
    """One unit vector per class: the normalised mean of its prompts' text embeddings."""
    out = []
    for name in prompts:
        z = model.encode_text(tokenize(prompts[name])).mean(0)
        out.append(F.normalize(z, dim=0).numpy())
    return np.stack(out)


@dataclass
class EvalSet:
    feats: np.ndarray  # classification images
    labels: dict[str, np.ndarray]  # task -> class index per image
    prompts: dict[str, dict[str, list[str]]]  # task -> class -> prompts
    ret_feats: np.ndarray  # retrieval pairs
    ret_texts: list[str]


@torch.no_grad()
def evaluate(model: TwoTower, ev: EvalSet, k: int = 5) -> dict[str, np.ndarray]:
    """Per-item outcomes: 1.0/0.0 correctness per classification image and task, and hit@k
    per retrieval query in both directions (so differences can be bootstrapped by item)."""
    out: dict[str, np.ndarray] = {}
    zi = model.encode_image(torch.as_tensor(ev.feats)).numpy()
    for task, lab in ev.labels.items():
        cls = class_embeddings(model, ev.prompts[task])
        out[task] = ((zi @ cls.T).argmax(1) == lab).astype(np.float32)
    ri, rt = embed(model, ev.ret_feats, ev.ret_texts)
    sim = ri @ rt.T
    diag = np.diag(sim)[:, None]
    # rank = number of candidates scoring strictly higher than the true partner
    out["i2t_r@5"] = ((sim > diag).sum(1) < k).astype(np.float32)
    out["t2i_r@5"] = ((sim.T > diag).sum(1) < k).astype(np.float32)
    return out
