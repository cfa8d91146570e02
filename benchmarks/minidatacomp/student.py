"""The tiny two-tower CLIP the harness trains on each subset, and zero-shot evaluation.

Image tower: MLP over 20x20 RGB pixels; text tower: mean of word embeddings (hashed
vocabulary) + linear. Contrastive (symmetric InfoNCE, learnable temperature). It is
deliberately far smaller than tiny-clip (laion_spark.models.tiny_clip) so that 8 subsets x
several seeds train in seconds each on 2 shared CPU cores.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BUCKETS = 512
MAX_WORDS = 12
DIM = 32


def tokenize(texts: list[str]) -> torch.Tensor:
    """Words hashed into BUCKETS (stable across runs: a fixed polynomial hash); 0 = pad."""
    out = torch.zeros(len(texts), MAX_WORDS, dtype=torch.long)
    for i, t in enumerate(texts):
        for j, w in enumerate(re.findall(r"[a-z]+", t.lower())[:MAX_WORDS]):
            h = 0
            for ch in w:
                h = (h * 131 + ord(ch)) % 1_000_003
            out[i, j] = 1 + h % (BUCKETS - 1)
    return out


class TwoTower(nn.Module):
    def __init__(self, d_pix: int, dim: int = DIM):
        super().__init__()
        self.img = nn.Sequential(nn.Linear(d_pix, 128), nn.ReLU(), nn.Linear(128, dim))
        self.emb = nn.EmbeddingBag(BUCKETS, 64, mode="mean", padding_idx=0)
        self.txt = nn.Linear(64, dim)
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def encode_image(self, px: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.img(px), dim=-1)

    def encode_text(self, tok: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.txt(self.emb(tok)), dim=-1)


def train(
    px: np.ndarray,
    texts: list[str],
    repeats: np.ndarray | None,
    samples_seen: int,
    seed: int,
    batch: int = 64,
    lr: float = 3e-3,
) -> TwoTower:
    """Train for exactly `samples_seen` samples, drawn epoch-wise from the subset (a sample
    with repeat r appears r times per epoch)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    idx_all = np.arange(len(px)) if repeats is None else np.repeat(np.arange(len(px)), repeats)
    x = torch.as_tensor(px, dtype=torch.float32)
    tok = tokenize(texts)
    model = TwoTower(px.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = np.zeros(0, np.int64)
    seen = 0
    while seen < samples_seen:
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(idx_all)])
        b, order = order[:batch], order[batch:]
        zi, zt = model.encode_image(x[b]), model.encode_text(tok[b])
        logits = model.logit_scale.exp().clamp(max=100) * zi @ zt.T
        y = torch.arange(len(b))
        loss = 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(b)
    return model


@torch.no_grad()
def embed(model: TwoTower, px: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    zi = model.encode_image(torch.as_tensor(px, dtype=torch.float32)).numpy()
    zt = model.encode_text(tokenize(texts)).numpy()
    return zi, zt


@torch.no_grad()
def class_embeddings(
    model: TwoTower, prompts: dict[str, list[str]]
) -> tuple[list[str], np.ndarray]:
    names = list(prompts)
    embs = []
    for n in names:
        z = model.encode_text(tokenize(prompts[n])).mean(0)
        embs.append(F.normalize(z, dim=0).numpy())
    return names, np.stack(embs)


@torch.no_grad()
def zero_shot_accuracy(
    model: TwoTower, px: np.ndarray, labels: list[str], prompts: dict[str, list[str]]
) -> float:
    names, cls = class_embeddings(model, prompts)
    zi = model.encode_image(torch.as_tensor(px, dtype=torch.float32)).numpy()
    pred = np.array(names)[(zi @ cls.T).argmax(1)]
    return float((pred == np.array(labels)).mean())
