"""A fixed, frozen image featuriser: a two-layer random convolutional network.

Why this and not a trained encoder: the students must learn everything semantic from the
selected pairs. A random conv net knows nothing about colours or shapes (its filters are
Gaussian draws with a fixed seed, never trained on any data), but its pooled responses keep
colour, edges and coarse position linearly available, so a small MLP on top can learn the
concepts from pairs. Computing it once for every picture turns the image tower's first
layers into a cache: a student then trains in seconds on 2 cores while the selection still
decides which (picture, caption) pairs it learns from and how often.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.minidatacomp.pool import PIX


class RandomConv(torch.nn.Module):
    def __init__(self, seed: int = 1234, c1: int = 48, c2: int = 96):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(c1, 3, 5, 5, generator=g) * (2.0 / (3 * 25)) ** 0.5
        self.b1 = 0.1 * torch.randn(c1, generator=g)
        self.w2 = torch.randn(c2, c1, 3, 3, generator=g) * (2.0 / (c1 * 9)) ** 0.5
        self.b2 = 0.1 * torch.randn(c2, generator=g)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - 0.5
        h = F.max_pool2d(F.relu(F.conv2d(x, self.w1, self.b1, padding=2)), 2)  # 16x16
        h = F.max_pool2d(F.relu(F.conv2d(h, self.w2, self.b2, padding=1)), 2)  # 8x8
        # coarse layout (4x4 cells) plus a global max: position and shape evidence
        cells = F.adaptive_avg_pool2d(h, 4).flatten(1)
        glob = F.adaptive_max_pool2d(h, 1).flatten(1)
        return torch.cat([cells, glob], 1)


def featurise(px: np.ndarray, seed: int = 1234, batch: int = 2048) -> np.ndarray:
    """[n, PIX*PIX*3] pixels -> [n, d] float32 features (deterministic for a seed)."""
    net = RandomConv(seed)
    out = []
    for i in range(0, len(px), batch):
        x = torch.as_tensor(px[i : i + batch]).reshape(-1, PIX, PIX, 3).permute(0, 3, 1, 2)
        out.append(net(x.contiguous()).numpy())
    return np.concatenate(out).astype(np.float32)


class Standardiser:
    """Per-feature mean/std from a reference set (the pool), applied to every set."""

    def __init__(self, ref: np.ndarray):
        self.mean = ref.mean(0)
        self.std = ref.std(0) + 1e-4

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)
