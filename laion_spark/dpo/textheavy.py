"""Text-heavy image detection without an OCR model.

CLIP scores of images that are mostly rendered text (documents, screenshots, posters) follow
the text in the image rather than the scene, so the paper drops such images before ranking
(docs/dpo.md). Two detectors, no download:

- `statistic` (default): a stroke statistic of the pixels. Rendered text is rows of many
  thin strokes (many intensity edges along a row) separated by blank rows between
  lines; a scene is neither, and a texture is stroke-dense everywhere without blank rows.
  text_score = 2 * min(share of stroke-dense rows, share of blank rows), in [0, 1].
- `zeroshot`: CLIP's own opinion: softmax over prompts that describe text ("a page of
  text", "a screenshot", ...) against prompts that describe a picture, summed over the text
  prompts. It needs a CLIP model that can read (real CLIP can; tiny-clip only knows shapes).

`measure()` runs a detector on generated documents, signs, scenes and textures and returns
precision/recall; docs/dpo.md records what it gives.
"""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np

STATISTIC_ID = "statistic-v1"
MAX_SIDE = 256  # images are reduced to this before the statistic (bounded work per image)
# a row is stroke-dense at >= DENSE edges per pixel (8 per 100 px: four strokes), blank at
# <= BLANK; an edge is an intensity step of more than EDGE_STEP grey levels (JPEG noise is less)
DENSE = 0.08
BLANK = 0.01
EDGE_STEP = 30.0
TEXT_PROMPTS = [
    "a page of text",
    "a document with many words",
    "a screenshot of text",
    "a poster with large letters",
]
PICTURE_PROMPTS = ["a photo", "a picture of an object", "a drawing of a shape", "a scene"]


def _gray(image: Any) -> np.ndarray:
    from PIL import Image

    im = image.convert("L")
    w, h = im.size
    scale = MAX_SIDE / max(w, h)
    if scale < 1:
        im = im.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def text_statistic(image: Any) -> float:
    """text_score in [0, 1] of a PIL image (see the module docstring)."""
    g = _gray(image)
    if g.shape[0] < 8 or g.shape[1] < 8:
        return 0.0
    # edges along each row = local maxima of the horizontal intensity step: a glyph gives
    # two or more per character, a solid shape two per crossing, a smooth gradient none
    dx = np.abs(np.diff(g, axis=1))
    peak = (dx[:, 1:-1] > EDGE_STEP) & (dx[:, 1:-1] >= dx[:, :-2]) & (dx[:, 1:-1] > dx[:, 2:])
    per_px = peak.sum(1) / g.shape[1]
    dense = float((per_px >= DENSE).mean())
    blank = float((per_px <= BLANK).mean())
    return float(min(1.0, 2 * min(dense, blank)))


def statistic_scores(images: list[Any]) -> np.ndarray:
    return np.array([text_statistic(im) for im in images], dtype=np.float32)


def zero_shot_scores(clip: Any, image_tensors: Any) -> np.ndarray:
    """P(text prompt) for preprocessed images with a LoadedClip (softmax at CLIP's scale 100)."""
    txt = clip.encode_text(TEXT_PROMPTS + PICTURE_PROMPTS)
    img = clip.encode_image_tensor(image_tensors)
    logits = 100.0 * img @ txt.T
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return p[:, : len(TEXT_PROMPTS)].sum(1).astype(np.float32)


# --- generated evaluation data -------------------------------------------------------------
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this from have "
    "or by one had not but what all were when we there can an your which their said if do will "
    "each about how up out them then she many some so these would other into has more her two "
    "like him see time could no make than first been its who now people my made over did down"
).split()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def render_document(rng: random.Random, size: int = 192) -> Any:
    """A page of text lines (dark on light or light on dark)."""
    from PIL import Image, ImageDraw

    dark_on_light = rng.random() < 0.75
    bg = rng.randint(215, 255) if dark_on_light else rng.randint(0, 50)
    fg = rng.randint(0, 60) if dark_on_light else rng.randint(200, 255)
    im = Image.new("L", (size, size), bg)
    d = ImageDraw.Draw(im)
    fs = rng.randint(10, 18)
    font = _font(fs)
    y = rng.randint(2, 10)
    while y < size - fs:
        line = " ".join(rng.choice(_WORDS) for _ in range(12))
        d.text((rng.randint(2, 10), y), line, fill=fg, font=font)
        y += int(fs * rng.uniform(1.4, 2.0))
    return im.convert("RGB")


def render_sign(rng: random.Random, size: int = 192) -> Any:
    """A shape scene with two or three large lines of text over it (a poster)."""
    from PIL import ImageDraw

    from laion_spark.demo.synthetic import random_attributes, render

    im = render(random_attributes(rng), size, rng.randrange(2**31))
    d = ImageDraw.Draw(im)
    fs = rng.randint(18, 28)
    font = _font(fs)
    y = rng.randint(4, 20)
    for _ in range(rng.choice([2, 3])):
        text = " ".join(rng.choice(_WORDS).upper() for _ in range(3))
        d.text((6, y), text, fill=(255, 255, 255) if rng.random() < 0.5 else (0, 0, 0), font=font)
        y += int(fs * 1.8)
    return im


def render_scene(rng: random.Random, size: int = 192) -> Any:
    from laion_spark.demo.synthetic import random_attributes, render

    return render(random_attributes(rng), size, rng.randrange(2**31))


def render_clutter(rng: random.Random, size: int = 192) -> Any:
    """Many overlapping shapes: edge-rich but not text."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(8, 20)):
        x, y, r = rng.randint(0, size), rng.randint(0, size), rng.randint(6, size // 4)
        col = tuple(rng.randint(0, 255) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x - r, y - r, x + r, y + r], fill=col)
    return im


def render_texture(rng: random.Random, size: int = 192) -> Any:
    """Smoothed noise (foliage, gravel, fabric stand-ins)."""
    from PIL import Image, ImageFilter

    arr = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (size, size, 3), np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))


KINDS = {
    "document": (render_document, True),
    "sign": (render_sign, True),
    "scene": (render_scene, False),
    "clutter": (render_clutter, False),
    "texture": (render_texture, False),
}


def jpeg(image: Any, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def evaluation_set(per_kind: int = 20, seed: int = 0) -> list[tuple[str, bool, bytes]]:
    """(kind, is_text, jpeg bytes) for `per_kind` images of each kind."""
    rng = random.Random(seed)
    return [
        (kind, is_text, jpeg(make(rng)))
        for kind, (make, is_text) in KINDS.items()
        for _ in range(per_kind)
    ]


def measure(scores: np.ndarray, labels: np.ndarray, kinds: list[str], threshold: float) -> dict:
    """Precision, recall and per-kind flag rate of `scores >= threshold`."""
    flagged = scores >= threshold
    tp = int((flagged & labels).sum())
    out = {
        "threshold": threshold,
        "precision": round(tp / max(1, int(flagged.sum())), 3),
        "recall": round(tp / max(1, int(labels.sum())), 3),
    }
    for kind in dict.fromkeys(kinds):
        mask = np.array([k == kind for k in kinds])
        out[f"flagged_{kind}"] = round(float(flagged[mask].mean()), 3)
    return out
