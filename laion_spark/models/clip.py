"""Load a CLIP model in ONE way, whatever the weights are: hub tag, local file/dir, tiny-clip.

    clip = load_clip(cfg.embed)                 # tiny-clip (trained once, cached) by default
    img = clip.encode_images([jpeg_bytes, ...])  # (n, dim) float32, L2-normalised
    txt = clip.encode_text(["a red circle"])     # (n, dim) float32, L2-normalised

`model_id` = "<architecture>@<12 hex of sha256 over the weights>": two processes loading the
same weights (driver, every Spark worker) get the same id, and different weights never share
one, so the embeddings table can hold several models side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laion_spark.embed.settings import EmbedSettings
from laion_spark.models.device import cached, resolve_device, resolve_precision
from laion_spark.settings import ConfigError

# LAION-5B defaults (ViT-B/32 en, multilingual CLIP for the rest); tiny-clip overrides them
LAION_THRESHOLDS = {"en": 0.28, "multi": 0.26}
_CKPT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "checkpoint.pt",
    "model.pt",
)


class ImageDecodeError(ValueError):
    """An image's bytes could not be decoded (or are too large) for CLIP."""


def decode_rgb(
    data: bytes | None,
    max_pixels: int,
    error: type[ValueError] = ImageDecodeError,
    min_side: int = 0,
) -> Any:
    """Encoded image bytes -> RGB PIL image; raises `error` with the reason when they are
    empty, undecodable or more than `max_pixels` (checked before decoding: bombs).

    `min_side` > 0: a JPEG whose shorter side is at least twice that is decoded at a DCT
    scale (1/2, 1/4, 1/8) that keeps the shorter side >= `min_side`: a 60 MP photo for a
    224-px model costs 1/64 of the pixels. Other formats decode whole."""
    from PIL import Image

    if not data:
        raise error("empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise error(f"image too large: {w}x{h} pixels")
            want = (w, h)
            if min_side > 0 and min(w, h) >= 2 * min_side:
                k = min(w, h) / min_side  # draft keeps both sides >= the requested ones
                want = (max(1, int(w / k)), max(1, int(h / k)))
            im.draft("RGB", want)  # JPEG only (a no-op for other formats)
            return im.convert("RGB")
    except error:
        raise
    except Image.UnidentifiedImageError:
        # Pillow's message names the BytesIO object; say what the bytes are instead
        from laion_spark.download.resize import describe_bytes

        raise error(f"cannot decode image: {describe_bytes(data)}") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise error(f"cannot decode image: {type(e).__name__}: {e}") from None


@dataclass
class LoadedClip:
    model: Any  # open_clip CLIP module, eval mode, on `device`
    preprocess: Any  # PIL.Image -> CHW float tensor (open_clip's eval transform)
    tokenizer: Any  # list[str] -> LongTensor of token ids
    device: str
    dim: int
    model_id: str
    precision: str = "fp32"
    # default CLIP-filter thresholds per language group ("en", "multi") for this model
    thresholds: dict[str, float] = field(default_factory=lambda: dict(LAION_THRESHOLDS))
    max_image_pixels: int = 64_000_000
    # large JPEGs are decoded DCT-reduced down to this shorter side (twice the model's
    # input, at least 256: the resize to the input still has 2x the pixels to filter
    # from, and images the download stage resized are never touched); 0 = never
    decode_side: int = 0

    # --- images ---------------------------------------------------------------------------
    def decode(self, data: bytes) -> Any:
        """JPEG/PNG/... bytes -> preprocessed CHW tensor; ImageDecodeError when unusable."""
        return self.preprocess(decode_rgb(data, self.max_image_pixels, min_side=self.decode_side))

    def encode_image_tensor(self, batch: Any) -> np.ndarray:
        """Preprocessed (n, 3, H, W) tensor -> (n, dim) float32 L2-normalised embeddings."""
        import torch

        with torch.inference_mode(), self._autocast():
            x = batch.to(self.device, non_blocking=True)
            feats = self.model.encode_image(x)
        return _normalise(feats)

    def encode_images(self, images: list[bytes]) -> np.ndarray:
        """Encoded image bytes -> (n, dim) float32 L2-normalised; raises on an undecodable one."""
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_image_tensor(torch.stack([self.decode(b) for b in images]))

    # --- text -----------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Captions -> (n, dim) float32 L2-normalised (None/empty captions encode as "")."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer([t or "" for t in texts])
        with torch.inference_mode(), self._autocast():
            feats = self.model.encode_text(tokens.to(self.device, non_blocking=True))
        return _normalise(feats)

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda") and self.precision in ("fp16", "bf16"):
            dt = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dt)
        return contextlib.nullcontext()


def _normalise(feats: Any) -> np.ndarray:

    f = feats.float()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return f.cpu().numpy().astype(np.float32, copy=False)


# --- weights --------------------------------------------------------------------------------
def is_local_weights(pretrained: str | None) -> bool:
    if not pretrained:
        return False
    p = pretrained.removeprefix("file://")
    return (
        os.path.sep in p or p.endswith((".pt", ".bin", ".pth", ".safetensors")) or Path(p).exists()
    )


def checkpoint_file(path: str) -> str:
    """A checkpoint file, or the checkpoint inside a directory (open_clip / HF layouts)."""
    p = Path(path.removeprefix("file://")).expanduser()
    if p.is_file():
        return str(p)
    if p.is_dir():
        for name in _CKPT_NAMES:
            if (p / name).is_file():
                return str(p / name)
        found = sorted(
            x for ext in ("*.safetensors", "*.pt", "*.bin", "*.pth") for x in p.glob(ext)
        )
        if len(found) == 1:
            return str(found[0])
        raise ConfigError(
            f"embed.pretrained: directory {p} has {len(found)} checkpoint files; name one"
        )
    raise ConfigError(f"embed.pretrained: checkpoint {p} does not exist")


def weights_digest(model: Any) -> str:
    """sha256 over parameter names, shapes and bytes: same weights -> same digest anywhere."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:12]


def _read_meta(ckpt: str) -> dict[str, Any]:
    """Sidecar `<checkpoint>.json` (tiny-clip writes thresholds there); {} when absent."""
    meta = Path(ckpt + ".json")
    if meta.is_file():
        try:
            return json.loads(meta.read_text())
        except ValueError:
            return {}
    return {}


def load_clip(clip_cfg: EmbedSettings, device: str | None = None) -> LoadedClip:
    """Load (once per process) the model `clip_cfg` names, on `device` (default clip_cfg.device).

    - model="tiny-clip", pretrained=None: the project's model (trained once, cached on disk);
    - pretrained=<local file or dir>: torch.load(weights_only=True) through open_clip;
    - pretrained=<hub tag>: open_clip's pretrained registry (hub cache; needs network once).
    """
    from laion_spark.models import tiny_clip as tiny

    dev = resolve_device(device or clip_cfg.device)
    prec = resolve_precision(clip_cfg.precision, dev)
    pretrained = clip_cfg.pretrained
    if clip_cfg.model == tiny.TINY_NAME:
        tiny.register()
        if not pretrained:
            pretrained = tiny.ensure_tiny_clip()
    elif not pretrained:
        raise ConfigError(
            f"embed.pretrained: model {clip_cfg.model!r} needs a hub tag or a local checkpoint path"
        )
    key = ("clip", clip_cfg.model, pretrained, dev, prec, clip_cfg.max_image_pixels)
    return cached(key, lambda: _load(clip_cfg, pretrained, dev, prec))


def _load(clip_cfg: EmbedSettings, pretrained: str, dev: str, prec: str) -> LoadedClip:
    import open_clip
    import torch

    meta: dict[str, Any] = {}
    if is_local_weights(pretrained):
        ckpt = checkpoint_file(pretrained)
        meta = _read_meta(ckpt)
        with _no_random_init_warning():  # the weights are loaded right below
            model = open_clip.create_model(clip_cfg.model, pretrained=None, device="cpu")
        # open_clip's loader: torch.load(weights_only=True) or safetensors, strips
        # "module." prefixes, resizes position embeddings; the same path as hub weights
        open_clip.load_checkpoint(model, ckpt, weights_only=True)
    else:
        model = open_clip.create_model(
            clip_cfg.model, pretrained=pretrained, device="cpu", require_pretrained=True
        )
    model.eval()
    digest = weights_digest(model)
    model = model.to(dev)
    preprocess = open_clip.image_transform(
        model.visual.image_size,
        is_train=False,
        mean=getattr(model.visual, "image_mean", None),
        std=getattr(model.visual, "image_std", None),
    )
    tokenizer = open_clip.get_tokenizer(clip_cfg.model)
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["x"]).to(dev)).shape[-1])
    thresholds = dict(LAION_THRESHOLDS)
    thresholds.update({k: float(v) for k, v in (meta.get("thresholds") or {}).items()})
    return LoadedClip(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=dev,
        dim=dim,
        model_id=f"{clip_cfg.model}@{digest}",
        precision=prec,
        thresholds=thresholds,
        max_image_pixels=clip_cfg.max_image_pixels,
        decode_side=max(256, 2 * max(_pair(model.visual.image_size))),
    )


def _pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class _DropRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _no_random_init_warning():
    """open_clip warns (on the root logger, once per worker) that a model built without a hub
    tag is random, just before we load the local checkpoint into it: a false alarm."""
    drop = _DropRandomInit()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def embedding_model_id(
    cfg: Any, tables: Any, explicit: str | None = None, key: str = ""
) -> str | None:
    """Which `embeddings` model a stage reads, by one rule for every stage.

    `explicit` (a stage's setting or argument) wins; else the only model in the table; else,
    with several, the configured `embed:` model's id when the table holds it (this loads the
    model); else an error naming the models and the key to set. None when nothing is embedded.
    """
    if explicit:
        return explicit
    models = tables.distinct("embeddings", "model_id")
    if len(models) <= 1:
        return models[0] if models else None
    try:
        configured = load_clip(cfg.embed).model_id
    except Exception:  # weights not on this driver: cannot tell which one was meant
        configured = None
    if configured in models:
        return configured
    where = f"set {key}" if key else "name one"
    raise ConfigError(f"embeddings hold several models {models}; {where}")
