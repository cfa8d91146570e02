"""FLYT and M-FLYT: learn per-sample scores by differentiating a downstream loss through
one weighted contrastive training step of a reference CLIP ("Filter Like You Test",
Shechter & Carmon 2025).

Reference model: the frozen CLIP towers (their embeddings, already in the `embeddings`
table) followed by trainable image/text projections initialised to the identity, i.e. the
last layer of a CLIP being fine-tuned. One outer step:

    s      = head(features[batch])                 # FLYT: MLP over [img_emb, txt_emb]
    w      = softmax(s)                             # M-FLYT: linear mix of score columns
    θ'     = θ - η ∇θ Σ_i w_i ℓ_i(θ)                # per-sample symmetric InfoNCE, create_graph
    L(φ)   = CE(zero-shot logits of θ' on the labelled task images, labels)
    φ     ← φ - lr ∇φ L                             # the hypergradient, through θ'
    θ     ← θ'.detach()                             # when online_reference

The inner step is taken with torch.func.functional_call on the reference module, so θ'
is a plain dict of tensors that autograd differentiates through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn
from torch.func import functional_call

from laion_spark.curate.settings import FlytSettings


class ReferenceCLIP(nn.Module):
    """Trainable projections over frozen CLIP embeddings (identity at start)."""

    def __init__(self, d_img: int, d_txt: int, dtype=torch.float32):
        super().__init__()
        d = min(d_img, d_txt)
        self.img = nn.Linear(d_img, d, bias=False, dtype=dtype)
        self.txt = nn.Linear(d_txt, d, bias=False, dtype=dtype)
        with torch.no_grad():
            self.img.weight.copy_(torch.eye(d, d_img, dtype=dtype))
            self.txt.weight.copy_(torch.eye(d, d_txt, dtype=dtype))

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return TF.normalize(self.img(img), dim=-1), TF.normalize(self.txt(txt), dim=-1)


class ScoreHead(nn.Module):
    """FLYT head: MLP over features (hidden=0: linear, which is M-FLYT's mixer)."""

    def __init__(self, d_in: int, hidden: int, dtype=torch.float32):
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(
                nn.Linear(d_in, hidden, dtype=dtype), nn.ReLU(), nn.Linear(hidden, 1, dtype=dtype)
            )
        else:
            self.net = nn.Sequential(nn.Linear(d_in, 1, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def per_sample_clip_loss(zi: torch.Tensor, zt: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE, one value per pair of the batch."""
    logits = zi @ zt.T / temperature
    target = torch.arange(len(zi), device=zi.device)
    return 0.5 * (
        TF.cross_entropy(logits, target, reduction="none")
        + TF.cross_entropy(logits.T, target, reduction="none")
    )


def downstream_loss(ref: ReferenceCLIP, params, task_img, task_labels, class_txt, temperature):
    """Zero-shot classification loss of the reference model with parameters `params`."""
    zi, zc = functional_call(ref, params, (task_img, class_txt))
    return TF.cross_entropy(zi @ zc.T / temperature, task_labels)


def inner_step(ref: ReferenceCLIP, params, weights, img, txt, inner_lr, temperature):
    """θ' = θ - η ∇θ Σ w_i ℓ_i(θ), differentiable with respect to `weights`."""
    zi, zt = functional_call(ref, params, (img, txt))
    loss = (weights * per_sample_clip_loss(zi, zt, temperature)).sum()
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
    return {n: params[n] - inner_lr * g for n, g in zip(names, grads, strict=False)}


def outer_loss(head, ref, ref_params, feats, img, txt, task, inner_lr, temperature):
    """Downstream loss after one step weighted by softmax(head(feats)): a function of head."""
    weights = torch.softmax(head(feats), dim=0)
    new = inner_step(ref, ref_params, weights, img, txt, inner_lr, temperature)
    return downstream_loss(ref, new, *task, temperature), new


@dataclass
class ScoreModel:
    """A trained head in numpy form, cheap to broadcast and apply on executors."""

    kind: str  # flyt | mflyt
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W [out, in], b [out]) per Linear
    columns: list[str]  # mflyt: input score columns
    mean: np.ndarray | None = None  # mflyt: column standardisation (nulls -> mean)
    std: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, np.float64)
        if self.mean is not None:
            h = np.where(np.isnan(h), self.mean, h)
            h = (h - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return h[:, 0]


def _to_score_model(head: ScoreHead, kind: str, columns, mean=None, std=None) -> ScoreModel:
    layers = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in head.net
        if isinstance(m, nn.Linear)
    ]
    return ScoreModel(kind, layers, list(columns), mean, std)


def train(
    features: np.ndarray,
    img: np.ndarray,
    txt: np.ndarray,
    task_img: np.ndarray,
    task_labels: np.ndarray,
    class_txt: np.ndarray,
    s: FlytSettings,
    seed: int = 0,
    linear: bool = False,
) -> tuple[ScoreHead, list[float]]:
    """Train a score head; returns it and the downstream loss per step."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    f = torch.as_tensor(features, dtype=torch.float32)
    xi, xt = torch.as_tensor(img, dtype=torch.float32), torch.as_tensor(txt, dtype=torch.float32)
    task = (
        torch.as_tensor(task_img, dtype=torch.float32),
        torch.as_tensor(task_labels, dtype=torch.long),
        torch.as_tensor(class_txt, dtype=torch.float32),
    )
    head = ScoreHead(f.shape[1], 0 if linear else s.hidden)
    ref = ReferenceCLIP(xi.shape[1], xt.shape[1])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in ref.named_parameters()}
    opt = torch.optim.Adam(head.parameters(), lr=s.lr)
    b = min(s.batch_size, len(f))
    history = []
    for _ in range(s.steps):
        idx = torch.randperm(len(f), generator=g)[:b]
        loss, new = outer_loss(
            head, ref, params, f[idx], xi[idx], xt[idx], task, s.inner_lr, s.temperature
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if s.online_reference:
            params = {k: v.detach().clone().requires_grad_(True) for k, v in new.items()}
    return head, history


def standardise(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means/stds ignoring NaN (a constant or all-null column gets std 1)."""
    with np.errstate(all="ignore"):
        mean = np.nanmean(cols, axis=0)
        std = np.nanstd(cols, axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    std = np.where(~np.isfinite(std) | (std < 1e-12), 1.0, std)
    x = np.where(np.isnan(cols), mean, cols)
    return (x - mean) / std, mean, std


def train_flyt(img, txt, task_img, task_labels, class_txt, s: FlytSettings, seed=0) -> ScoreModel:
    feats = np.concatenate([img, txt], axis=1)
    head, _ = train(feats, img, txt, task_img, task_labels, class_txt, s, seed)
    return _to_score_model(head, "flyt", [])


def train_mflyt(
    score_cols: np.ndarray,
    columns: list[str],
    img,
    txt,
    task_img,
    task_labels,
    class_txt,
    s: FlytSettings,
    seed=0,
) -> ScoreModel:
    x, mean, std = standardise(np.asarray(score_cols, np.float64))
    head, _ = train(x, img, txt, task_img, task_labels, class_txt, s, seed, linear=True)
    return _to_score_model(head, "mflyt", columns, mean, std)
