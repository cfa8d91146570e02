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

Several downstream tasks (the paper uses the training sets of many evaluation tasks) are
given as a list of (task_img, task_labels, class_txt); the downstream loss is their mean.

Early stopping (settings.patience > 0): a `val_fraction` of every task's images is held
out. Every `eval_every` steps the validation objective is computed on fixed upstream
batches at the current reference: the held-out downstream loss after one uniformly
weighted step minus that after one head-weighted step, i.e. the *gain* the scores buy
(comparable across steps even while the online reference itself improves). Training stops
after `patience` evaluations without a new best gain, and the best head is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def _is_one_task(task) -> bool:
    return isinstance(task, tuple) and len(task) == 3 and isinstance(task[0], torch.Tensor)


def tasks_loss(ref: ReferenceCLIP, params, tasks, temperature):
    """Mean downstream loss over one task (a tuple) or several (a list of tuples)."""
    if _is_one_task(tasks):
        return downstream_loss(ref, params, *tasks, temperature)
    return sum(downstream_loss(ref, params, *t, temperature) for t in tasks) / len(tasks)


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
    return tasks_loss(ref, new, task, temperature), new


def validation_gain(head, ref, ref_params, batches, val_tasks, inner_lr, temperature) -> float:
    """Held-out downstream loss after a uniform step minus after a head-weighted step,
    averaged over fixed upstream batches (higher: the scores help more)."""
    gains = []
    for feats, img, txt in batches:
        with torch.no_grad():
            w = torch.softmax(head(feats), dim=0)
        u = torch.full_like(w, 1.0 / len(w))
        losses = []
        for weights in (u, w):
            p = {k: v.detach().clone().requires_grad_(True) for k, v in ref_params.items()}
            new = inner_step(ref, p, weights, img, txt, inner_lr, temperature)
            with torch.no_grad():
                losses.append(float(tasks_loss(ref, new, val_tasks, temperature)))
        gains.append(losses[0] - losses[1])
    return float(np.mean(gains))


@dataclass
class ScoreModel:
    """A trained head in numpy form, cheap to broadcast and apply on executors."""

    kind: str  # flyt | mflyt
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W [out, in], b [out]) per Linear
    columns: list[str]  # mflyt: input score columns
    mean: np.ndarray | None = None  # mflyt: column standardisation (nulls -> mean)
    std: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # training record: steps, best step, val gains

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


def _to_score_model(head: ScoreHead, kind: str, columns, mean=None, std=None, info=None):
    layers = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in head.net
        if isinstance(m, nn.Linear)
    ]
    return ScoreModel(kind, layers, list(columns), mean, std, dict(info or {}))


def _as_tasks(tasks) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One (img, labels, class_txt) tuple or a list of them -> a list."""
    if isinstance(tasks, tuple) and len(tasks) == 3 and not isinstance(tasks[0], tuple):
        return [tasks]
    return list(tasks)


def split_tasks(tasks, fraction: float, seed: int):
    """Hold out `fraction` of every task's images (at least one each side) for validation."""
    train_t, val_t = [], []
    rng = np.random.default_rng(seed)
    for img, lab, cls in _as_tasks(tasks):
        n = len(img)
        k = min(n - 1, max(1, int(round(n * fraction))))
        perm = rng.permutation(n)
        v, t = perm[:k], perm[k:]
        train_t.append((img[t], lab[t], cls))
        val_t.append((img[v], lab[v], cls))
    return train_t, val_t


def _torch_tasks(tasks):
    return [
        (
            torch.as_tensor(np.asarray(i), dtype=torch.float32),
            torch.as_tensor(np.asarray(lab), dtype=torch.long),
            torch.as_tensor(np.asarray(c), dtype=torch.float32),
        )
        for i, lab, c in tasks
    ]


def train_tasks(
    features: np.ndarray,
    img: np.ndarray,
    txt: np.ndarray,
    tasks,
    s: FlytSettings,
    seed: int = 0,
    linear: bool = False,
) -> tuple[ScoreHead, dict]:
    """Train a score head against one or several downstream tasks.

    Returns the head (the best one by validation gain when `s.patience` > 0) and a record:
    steps run, best step, train loss per step, (step, val gain) per evaluation.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    f = torch.as_tensor(features, dtype=torch.float32)
    xi, xt = torch.as_tensor(img, dtype=torch.float32), torch.as_tensor(txt, dtype=torch.float32)
    early = s.patience > 0
    if early:
        train_t, val_t = split_tasks(tasks, s.val_fraction, seed)
        val = _torch_tasks(val_t)
    else:
        train_t, val = _as_tasks(tasks), []
    task = _torch_tasks(train_t)
    head = ScoreHead(f.shape[1], 0 if linear else s.hidden)
    ref = ReferenceCLIP(xi.shape[1], xt.shape[1])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in ref.named_parameters()}
    opt = torch.optim.Adam(head.parameters(), lr=s.lr)
    b = min(s.batch_size, len(f))
    # fixed upstream batches for validation, drawn once from their own generator
    gv = torch.Generator().manual_seed(seed + 1)
    vbatches = []
    for _ in range(s.val_batches if early else 0):
        vi = torch.randperm(len(f), generator=gv)[:b]
        vbatches.append((f[vi], xi[vi], xt[vi]))
    history: list[float] = []
    evals: list[tuple[int, float]] = []
    best, best_step, best_state, bad = -np.inf, 0, None, 0
    step = 0
    for step in range(1, s.steps + 1):
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
        if early and (step % s.eval_every == 0 or step == s.steps):
            gain = validation_gain(head, ref, params, vbatches, val, s.inner_lr, s.temperature)
            evals.append((step, gain))
            if gain > best:
                best, best_step, bad = gain, step, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            else:
                bad += 1
                if bad >= s.patience:
                    break
    if best_state is not None:
        head.load_state_dict(best_state)
    info = {
        "steps": step,
        "best_step": best_step if early else step,
        "best_val_gain": None if not early else float(best),
        "evals": evals,
        "train_loss": history,
    }
    return head, info


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
    """Train a score head on one task; returns it and the downstream loss per step."""
    head, info = train_tasks(
        features, img, txt, (task_img, task_labels, class_txt), s, seed, linear
    )
    return head, info["train_loss"]


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
    return train_flyt_tasks(img, txt, (task_img, task_labels, class_txt), s, seed)


def train_flyt_tasks(img, txt, tasks, s: FlytSettings, seed=0) -> ScoreModel:
    """FLYT head over [image_embedding, text_embedding] against one or several tasks."""
    feats = np.concatenate([img, txt], axis=1)
    head, info = train_tasks(feats, img, txt, tasks, s, seed)
    return _to_score_model(head, "flyt", [], info=info)


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
    return train_mflyt_tasks(
        score_cols, columns, img, txt, (task_img, task_labels, class_txt), s, seed
    )


def train_mflyt_tasks(score_cols, columns, img, txt, tasks, s: FlytSettings, seed=0) -> ScoreModel:
    """M-FLYT: a linear mix of the standardised score columns, trained like FLYT."""
    x, mean, std = standardise(np.asarray(score_cols, np.float64))
    head, info = train_tasks(x, img, txt, tasks, s, seed, linear=True)
    return _to_score_model(head, "mflyt", columns, mean, std, info)
