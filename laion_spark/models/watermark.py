"""pwatermark from an image classifier (LAION-5B: timm EfficientNet-B3 + small head).

LAION's detector (LAION-5B-WatermarkDetection, `watermark_model_v1.pt`) is
`timm.create_model("efficientnet_b3a", num_classes=2)` whose `classifier` is replaced by
Linear(1536, 256) -> ReLU -> Linear(256, 2); inputs are resized to 256x256, ImageNet
normalised; pwatermark = softmax(logits)[:, 0]; watermarked when > 0.8.

`load_watermark_model(path, arch)` accepts such a state dict (or a whole timm checkpoint
saved with torch.save(model.state_dict())): the classifier shape is read from the keys,
so any timm architecture with a `classifier`/`head`/`fc` works (tests use a tiny one).
`new_watermark_model(arch, hidden)` builds that shape untrained (the demo trains timm's tiny
`test_efficientnet` this way: laion_spark.score.demo_heads). Images come from the `images`
table bytes; decoding is bounded in pixels.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from laion_spark.models.heads import file_digest

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_PIXELS = 50_000_000
LAION_HIDDEN = 256  # LAION's head: Linear(features, 256) -> ReLU -> Linear(256, 2)


@dataclass
class WatermarkModel:
    module: nn.Module
    image_size: int
    positive_index: int
    model_ref: str

    @torch.no_grad()
    def predict_bytes(self, blobs: list[bytes | None], device: str = "cpu") -> np.ndarray:
        """pwatermark per image (NaN where the bytes do not decode)."""
        out = np.full(len(blobs), np.nan, dtype=np.float32)
        arrs, idx = [], []
        for i, b in enumerate(blobs):
            a = decode(b, self.image_size)
            if a is not None:
                arrs.append(a)
                idx.append(i)
        if not arrs:
            return out
        x = torch.from_numpy(np.stack(arrs)).to(device)
        m = self.module.to(device).eval()
        probs = []
        for i in range(0, len(x), 64):
            probs.append(
                torch.softmax(m(x[i : i + 64]).float(), dim=-1)[:, self.positive_index].cpu()
            )
        out[idx] = torch.cat(probs).numpy()
        return out


def decode(blob: bytes | None, size: int) -> np.ndarray | None:
    """Bytes -> (3, size, size) float32 normalised, or None if not an image."""
    if not blob:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.width * im.height > MAX_PIXELS:
                return None
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except Exception:  # any undecodable image is a per-row NaN, never a crashed task
        return None
    return ((a - MEAN) / STD).transpose(2, 0, 1).copy()


def _classifier_name(model: nn.Module) -> str:
    for name in ("classifier", "head", "fc"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has no classifier/head/fc to replace")


def laion_head(features: int, hidden: int = LAION_HIDDEN) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def new_watermark_model(arch: str = "efficientnet_b3a", hidden: int = LAION_HIDDEN) -> nn.Module:
    """An untrained timm `arch` whose classifier is LAION's two-layer head (class 0 =
    watermark), i.e. the module `watermark_model_v1.pt` is a state dict of."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=2)
    cname = _classifier_name(model)
    features = getattr(getattr(model, cname), "in_features", model.num_features)
    setattr(model, cname, laion_head(features, hidden))
    return model


def load_watermark_model(
    path: str, arch: str = "efficientnet_b3a", image_size: int = 256, positive_index: int = 0
) -> WatermarkModel:
    import timm

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"watermark image model not found: {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    model = timm.create_model(arch, pretrained=False, num_classes=2)
    cname = _classifier_name(model)
    # LAION's head: classifier.0 Linear(feat, hidden) -> ReLU -> classifier.2 Linear(hidden, 2)
    if f"{cname}.0.weight" in sd and f"{cname}.2.weight" in sd:
        w0 = sd[f"{cname}.0.weight"]
        setattr(model, cname, laion_head(w0.shape[1], w0.shape[0]))
    model.load_state_dict(sd)
    ref = f"watermark-image:{arch}:{os.path.basename(path)}@{file_digest(path)}"
    return WatermarkModel(model.eval(), image_size, positive_index, ref)
