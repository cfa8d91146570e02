"""Generated image-caption data: coloured shapes on backgrounds, with captions that say so.

Used by the demo crawl, to train the tiny CLIP, and by tests and benchmarks. Everything is
deterministic given a seed, so the same sample is the same on every run and machine.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
POSITIONS = ["left", "right", "top", "bottom", "center"]
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "sky": (170, 200, 235),
    "sand": (215, 195, 150),
    "dark": (40, 40, 55),
}
_TEMPLATES = [
    "a {color} {shape} on the {position}",
    "photo of a {color} {shape} at the {position}",
    "a {color} {shape} placed {position}, {bg} background",
    "{color} {shape} in the {position} of the picture",
    "an image with a {color} {shape} on the {position}",
]


@dataclass(frozen=True)
class Attributes:
    color: str
    shape: str
    position: str
    background: str

    def caption(self, rng: random.Random) -> str:
        t = rng.choice(_TEMPLATES)
        pos = "middle" if self.position == "center" and "{position}," in t else self.position
        return t.format(color=self.color, shape=self.shape, position=pos, bg=self.background)


def random_attributes(rng: random.Random) -> Attributes:
    color = rng.choice(list(COLORS))
    bg = rng.choice([b for b in BACKGROUNDS if not (b == "dark" and color == "black")])
    return Attributes(color, rng.choice(SHAPES), rng.choice(POSITIONS), bg)


def _center(position: str, size: int, rng: random.Random) -> tuple[float, float]:
    q, h = size / 4, size / 2
    jitter = lambda: rng.uniform(-size * 0.05, size * 0.05)  # noqa: E731
    cx, cy = {
        "left": (q, h), "right": (3 * q, h), "top": (h, q), "bottom": (h, 3 * q), "center": (h, h)
    }[position]
    return cx + jitter(), cy + jitter()


def render(attrs: Attributes, size: int = 64, seed: int = 0) -> Image.Image:
    """Draw the attributes as an RGB image of `size` x `size`."""
    rng = random.Random(seed)
    bg = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in BACKGROUNDS[attrs.background])
    img = Image.new("RGB", (size, size), bg)  # type: ignore[arg-type]
    d = ImageDraw.Draw(img)
    cx, cy = _center(attrs.position, size, rng)
    r = size * rng.uniform(0.14, 0.2)
    col = COLORS[attrs.color]
    box = [cx - r, cy - r, cx + r, cy + r]
    if attrs.shape == "circle":
        d.ellipse(box, fill=col)
    elif attrs.shape == "square":
        d.rectangle(box, fill=col)
    elif attrs.shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    elif attrs.shape == "star":
        pts = []
        for i in range(10):
            import math

            a = math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
        d.polygon(pts, fill=col)
    elif attrs.shape == "cross":
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
    elif attrs.shape == "ring":
        d.ellipse(box, outline=col, width=max(2, int(r * 0.35)))
    return img


@dataclass(frozen=True)
class Sample:
    index: int
    attrs: Attributes
    caption: str
    image_seed: int
    mismatched: bool = False

    def image(self, size: int = 64) -> Image.Image:
        return render(self.attrs, size, self.image_seed)

    def jpeg(self, size: int = 64, quality: int = 90) -> bytes:
        buf = io.BytesIO()
        self.image(size).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


def make_samples(n: int, seed: int = 0, mismatch_rate: float = 0.0) -> list[Sample]:
    """`n` samples; a `mismatch_rate` fraction get a caption of different attributes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        attrs = random_attributes(rng)
        cap_attrs = attrs
        mismatched = rng.random() < mismatch_rate
        if mismatched:
            # a different colour AND shape, so the caption is plainly wrong
            while cap_attrs.color == attrs.color or cap_attrs.shape == attrs.shape:
                cap_attrs = random_attributes(rng)
        out.append(Sample(i, attrs, cap_attrs.caption(rng), rng.randrange(2**31), mismatched))
    return out
