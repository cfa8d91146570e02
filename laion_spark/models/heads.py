"""Small torch heads over CLIP embeddings: punsafe (NSFW), pwatermark, aesthetic, toxicity.

Shapes follow LAION's released models:
- NSFW (`clip_autokeras_binary_nsfw`, L/14): Normalization -> 768->64->512->256->1, ReLU
  between layers, sigmoid output. B/32 (`clip_autokeras_nsfw_b32`): 512->32->32->1.
  Other widths (e.g. the tiny CLIP's 64/128-d) get a generic d->64->32->1.
- Aesthetic predictor v1 (`sa_0_4_vit_l_14_linear.pth`): one nn.Linear(d, 1), no activation.
  The v2 "improved aesthetic predictor" (keys `layers.N.*`, Linear stack without
  activations) is accepted too.

One file format for everything this project writes (torch.save of a plain dict, loadable
with weights_only=True): {"format": "laion_spark.head/1", "kind", "in_dim", "hidden",
"activation", "output", "state_dict", "input" ("image"|"text"), "threshold", "metrics",
"description" (what the head was trained to detect, in words; optional)}.
Raw LAION aesthetic state dicts (`weight`/`bias`, or `layers.N.weight`) load as well.
docs/score.md explains how to convert LAION's Keras NSFW detector into this format.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "laion_spark.head/1"
KINDS = ("nsfw", "watermark", "aesthetic", "toxicity")
# Keras backend epsilon: Normalization divides by max(sqrt(var), eps)
KERAS_EPS = 1e-7


def nsfw_hidden(in_dim: int) -> list[int]:
    """LAION's NSFW MLP widths for the embedding width (generic for other CLIPs)."""
    if in_dim == 768:
        return [64, 512, 256]
    if in_dim == 512:
        return [32, 32]
    return [64, 32]


def default_hidden(kind: str, in_dim: int) -> list[int]:
    if kind == "aesthetic":
        return []  # LAION aesthetic predictor v1: linear
    return nsfw_hidden(in_dim)  # the watermark/toxicity embedding heads reuse the NSFW shape


class MLPHead(nn.Module):
    """(x - mean) / max(sqrt(var), eps) -> Linear stack -> optional sigmoid."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        activation: str = "relu",  # relu | none
        output: str = "sigmoid",  # sigmoid | linear
    ):
        super().__init__()
        self.in_dim, self.hidden = int(in_dim), [int(h) for h in hidden]
        self.activation, self.output = activation, output
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("var", torch.ones(in_dim))
        layers: list[nn.Module] = []
        dims = [self.in_dim, *self.hidden, 1]
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2 and activation == "relu":
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / torch.clamp(torch.sqrt(self.var), min=KERAS_EPS)
        return self.layers(x).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        return torch.sigmoid(z) if self.output == "sigmoid" else z

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]


@dataclass
class Head:
    """A loaded head plus what the stage records about it."""

    kind: str
    module: MLPHead
    input: str = "image"  # which embedding it reads: image | text
    threshold: float | None = None
    model_ref: str = ""  # recorded in scores.score_models
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""  # what it detects, in words (e.g. "stand-in ..., not an NSFW detector")

    @property
    def in_dim(self) -> int:
        return self.module.in_dim

    @torch.no_grad()
    def predict(self, x: np.ndarray, device: str = "cpu", batch: int = 65536) -> np.ndarray:
        m = self.module.to(device).eval()
        out = []
        for i in range(0, len(x), batch):
            t = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))
            out.append(m(t.to(device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def new_head(kind: str, in_dim: int, hidden: list[int] | None = None) -> MLPHead:
    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; kinds: {', '.join(KINDS)}")
    h = default_hidden(kind, in_dim) if hidden is None else hidden
    return MLPHead(in_dim, h, "relu", "linear" if kind == "aesthetic" else "sigmoid")


def save_head(
    path: str,
    kind: str,
    module: MLPHead,
    input: str = "image",
    threshold: float | None = None,
    metrics: dict[str, Any] | None = None,
    description: str = "",
) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "kind": kind,
            "description": description,
            "in_dim": module.in_dim,
            "hidden": module.hidden,
            "activation": module.activation,
            "output": module.output,
            "input": input,
            "threshold": threshold,
            "metrics": {
                k: v for k, v in (metrics or {}).items() if isinstance(v, int | float | str)
            },
            "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        },
        path,
    )
    return path


def file_digest(path: str, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _from_raw_state_dict(kind: str, sd: dict[str, torch.Tensor]) -> MLPHead:
    """LAION aesthetic predictor files: v1 `weight`/`bias`, v2 `layers.N.weight` (no activations)."""
    if "weight" in sd and "bias" in sd:
        w = sd["weight"]
        m = MLPHead(w.shape[1], [], "none", "linear" if kind == "aesthetic" else "sigmoid")
        m.layers[0].weight.data.copy_(w.reshape(1, -1))
        m.layers[0].bias.data.copy_(sd["bias"].reshape(1))
        return m
    idx = sorted(
        {int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.endswith(".weight")}
    )
    if not idx:
        raise ValueError(f"unrecognised head state dict keys: {sorted(sd)[:6]}")
    ws = [sd[f"layers.{i}.weight"] for i in idx]
    m = MLPHead(
        ws[0].shape[1],
        [w.shape[0] for w in ws[:-1]],
        "none",
        "linear" if kind == "aesthetic" else "sigmoid",
    )
    for lin, i in zip(m.linears(), idx, strict=True):
        lin.weight.data.copy_(sd[f"layers.{i}.weight"])
        lin.bias.data.copy_(sd[f"layers.{i}.bias"])
    return m


def load_head(path: str, kind: str) -> Head:
    """Load a head file written by save_head (or a raw LAION aesthetic state dict)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"score head file for {kind} not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    ref = f"{kind}:{os.path.basename(path)}@{file_digest(path)}"
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj["kind"] != kind:
            raise ValueError(f"{path} holds a {obj['kind']!r} head, not {kind!r}")
        m = MLPHead(obj["in_dim"], obj["hidden"], obj["activation"], obj["output"])
        m.load_state_dict(obj["state_dict"])
        return Head(
            kind,
            m.eval(),
            obj.get("input", "image"),
            obj.get("threshold"),
            ref,
            obj.get("metrics") or {},
            obj.get("description") or "",
        )
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        inp = "text" if kind == "toxicity" else "image"
        return Head(kind, _from_raw_state_dict(kind, obj).eval(), inp, None, ref)
    raise ValueError(f"{path}: not a laion_spark head file nor a state dict")


def train_mlp(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 200,
    lr: float = 3e-3,
    batch_size: int = 512,
    weight_decay: float = 1e-4,
    seed: int = 0,
    hidden: list[int] | None = None,
) -> MLPHead:
    """Fit a head on (embeddings, labels): BCE for binary kinds, MSE for aesthetic.

    Normalisation statistics are set from the training data first, as autokeras'
    Normalization layer does (`adapt`), so the released Keras weights and ours agree.
    """
    torch.manual_seed(seed)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    m = new_head(kind, x.shape[1], hidden)
    m.mean.copy_(torch.from_numpy(x.mean(0)))
    m.var.copy_(torch.from_numpy(x.var(0) + 1e-12))
    if kind == "aesthetic" and not m.hidden:
        return _fit_linear(m, x, y, weight_decay)
    # small heads train fastest on one thread (and do not fight Spark tasks for cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(m, kind, x, y, epochs, lr, batch_size, weight_decay, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_linear(m: MLPHead, x: np.ndarray, y: np.ndarray, ridge: float) -> MLPHead:
    """Least squares on the normalised embeddings (a linear head has a closed-form optimum)."""
    with torch.no_grad():
        z = (torch.from_numpy(x) - m.mean) / torch.clamp(torch.sqrt(m.var), min=KERAS_EPS)
        z1 = torch.cat([z, torch.ones(len(z), 1)], 1).double()
        a = z1.T @ z1 + ridge * len(z) * torch.eye(z1.shape[1], dtype=torch.float64)
        sol = torch.linalg.solve(a, z1.T @ torch.from_numpy(y).double())
        lin = m.linears()[0]
        lin.weight.copy_(sol[:-1].float().reshape(1, -1))
        lin.bias.copy_(sol[-1:].float())
    return m.eval()


def _fit(
    m: MLPHead,
    kind: str,
    x,
    y,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
) -> MLPHead:
    if m.output == "linear":
        m.linears()[-1].bias.data.fill_(float(y.mean()))  # start regressors at the mean score
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if kind == "aesthetic":
        loss_fn: Any = nn.MSELoss()
    else:
        loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(m.logits(xt[b]), yt[b])
            loss.backward()
            opt.step()
    return m.eval()


def from_keras_weights(arrays: list[np.ndarray], kind: str = "nsfw") -> MLPHead:
    """Build the head from `keras_model.get_weights()` of LAION's autokeras NSFW detector.

    Order as Keras returns it: Normalization [mean, variance, count], then per Dense layer
    [kernel (in, out), bias (out,)]; ReLU/Dropout/sigmoid layers hold no weights. Keras
    kernels are (in, out), torch Linear weights (out, in): transposed here.
    """
    arrs = [np.asarray(a) for a in arrays]
    mean = var = None
    if len(arrs) >= 3 and arrs[2].size == 1 and arrs[0].size == arrs[1].size:
        mean, var = arrs[0].reshape(-1), arrs[1].reshape(-1)
        arrs = arrs[3:]
    if len(arrs) % 2 or not arrs:
        raise ValueError("expected [mean, var, count] then (kernel, bias) pairs")
    kernels = arrs[0::2]
    in_dim = kernels[0].shape[0]
    m = MLPHead(
        in_dim,
        [k.shape[1] for k in kernels[:-1]],
        "relu",
        "linear" if kind == "aesthetic" else "sigmoid",
    )
    if mean is not None:
        m.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        m.var.copy_(torch.from_numpy(var.astype(np.float32)))
    for lin, k, b in zip(m.linears(), arrs[0::2], arrs[1::2], strict=True):
        lin.weight.data.copy_(torch.from_numpy(k.T.astype(np.float32)))
        lin.bias.data.copy_(torch.from_numpy(b.reshape(-1).astype(np.float32)))
    return m.eval()


def convert_keras_npz(npz_path: str, out_path: str, kind: str = "nsfw") -> str:
    """`np.savez(npz, *keras_model.get_weights())` file -> a head file for score.nsfw_head."""
    with np.load(npz_path) as z:
        arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    return save_head(out_path, kind, from_keras_weights(arrays, kind), threshold=0.5)


if __name__ == "__main__":  # python -m laion_spark.models.heads weights.npz nsfw.pt
    import sys

    print(convert_keras_npz(sys.argv[1], sys.argv[2], *(sys.argv[3:4] or ["nsfw"])))
