"""The mini-DataComp world: generated image-caption pairs with web-data noise in known
proportions, a long tail of rare concepts, and the held-out evaluation/task sets.

A concept is (colour, shape, position, background). Shapes follow a Zipf law (the rarest
shapes are a few hundred samples in a 24k pool), colours a milder one, so that "rare
concept" is a measurable thing: the balanced shape task weighs every shape equally.

Noise kinds (recorded per sample in `Pool.kinds`, proportions in NOISE):
  clean           the caption describes the image
  partial         correct but names one attribute only ("a red thing", "a star")
  mismatched      the caption of different attributes (colour and shape both wrong)
  near_duplicate  a re-upload of an earlier sample (pixel noise, same or re-templated
                  caption); sources are chosen by preferential attachment, so a few
                  images are copied many times (heavy-tailed duplicate clusters)
  off_topic       no object drawn (plain, noise or stripe texture) under a shape caption
  low_info        "IMG_0042.jpg", "photo", "click to enlarge" on a real image
  watermark       a real pair with a stock-photo watermark grid painted over the image
  unsafe          a checkerboard "unsafe" picture (stands in for NSFW content) with a
                  shape caption: bad data a safety head should catch
Independent of kind: 8% of captions are German/French (same facts in other words) and 12%
have sizes the DataComp basic filter rejects (small or extreme aspect).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from laion_spark.demo import synthetic
from laion_spark.demo.synthetic import BACKGROUNDS, COLORS, POSITIONS

PIX = 32

# the demo's vocabulary and renderer (laion_spark.demo.synthetic), with all twelve shapes
SHAPES = synthetic.SHAPES + synthetic.MORE_SHAPES
# frequency ranks: a fixed shuffle so the rare shapes are not simply the last-drawn ones
SHAPE_RANK = ["square", "circle", "triangle", "cross", "ring", "star",
              "bar", "diamond", "frame", "hexagon", "arrow", "crescent"]  # fmt: skip
COLOR_RANK = ["red", "blue", "black", "white", "green", "yellow", "orange", "purple"]
SHAPE_ZIPF, COLOR_ZIPF = 1.3, 0.6
TAIL_SHAPES = SHAPE_RANK[-4:]  # the four rarest shapes (reported separately)

NOISE = {
    "clean": 0.40,
    "partial": 0.04,
    "mismatched": 0.18,
    "near_duplicate": 0.12,
    "off_topic": 0.12,
    "low_info": 0.10,
    "watermark": 0.02,
    "unsafe": 0.02,
}
_TEMPLATES = [
    *synthetic._TEMPLATES,
    "a {color} {shape} on a {bg} background",
    "{color} {shape}, {position}",
]
_LOW_INFO = ["photo", "image", "untitled", "click to enlarge", "download", "picture"]
_FOREIGN = {
    "de": {
        "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "lila",
        "orange": "orangefarben", "black": "schwarz", "white": "weiß", "circle": "Kreis",
        "square": "Quadrat", "triangle": "Dreieck", "star": "Stern", "cross": "Kreuz",
        "ring": "Reif", "diamond": "Raute", "hexagon": "Sechseck", "crescent": "Mondsichel",
        "arrow": "Pfeil", "frame": "Rahmen", "bar": "Balken", "left": "links",
        "right": "rechts", "top": "oben", "bottom": "unten", "center": "Mitte",
    },
    "fr": {
        "red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune",
        "purple": "violet", "orange": "orangé", "black": "noir", "white": "blanc",
        "circle": "cercle", "square": "carré", "triangle": "triangle", "star": "étoile",
        "cross": "croix", "ring": "anneau", "diamond": "losange", "hexagon": "hexagone",
        "crescent": "croissant", "arrow": "flèche", "frame": "cadre", "bar": "barre",
        "left": "gauche", "right": "droite", "top": "haut", "bottom": "bas",
        "center": "centre",
    },
}  # fmt: skip
_FOREIGN_TEMPLATE = {
    "de": "ein {shape} in {color}, {position}",
    "fr": "un {shape} {color}, {position}",
}


@dataclass(frozen=True)
class Attrs(synthetic.Attributes):
    def caption(self, rng: random.Random) -> str:
        """One of this world's templates, the position as it is (never "middle")."""
        t = rng.choice(_TEMPLATES)
        return t.format(
            color=self.color, shape=self.shape, position=self.position, bg=self.background
        )


def _zipf(names: list[str], s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, len(names) + 1) ** s
    return p / p.sum()


SHAPE_P = dict(zip(SHAPE_RANK, _zipf(SHAPE_RANK, SHAPE_ZIPF), strict=True))
COLOR_P = dict(zip(COLOR_RANK, _zipf(COLOR_RANK, COLOR_ZIPF), strict=True))


def draw_attrs(rng: random.Random, balanced: bool = False) -> Attrs:
    """Pool distribution (Zipf shapes and colours) or, `balanced`, uniform attributes."""
    if balanced:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    else:
        shape = rng.choices(SHAPE_RANK, weights=[SHAPE_P[s] for s in SHAPE_RANK])[0]
        color = rng.choices(COLOR_RANK, weights=[COLOR_P[c] for c in COLOR_RANK])[0]
    bgs = [b for b in BACKGROUNDS if not (b == "dark" and color == "black")]
    return Attrs(color, shape, rng.choice(POSITIONS), rng.choice(bgs))


# more jitter than the demo's drawing, and jittered shape colours
_JITTER = synthetic.Jitter(background=14, radius=(0.15, 0.21), color=20)


def render(a: Attrs, seed: int, size: int = PIX) -> np.ndarray:
    """The attributes drawn as float32 [size*size*3] in [0, 1] (jittered, deterministic)."""
    img = synthetic.render(a, size, seed, jitter=_JITTER)
    return np.asarray(img, np.float32).reshape(-1) / 255.0


def _texture(rng: random.Random, nrng: np.random.Generator, size: int = PIX) -> np.ndarray:
    """An off-topic picture: plain background, noise, or stripes, no object."""
    r = rng.random()
    bg = np.array(BACKGROUNDS[rng.choice(list(BACKGROUNDS))], np.float32) / 255.0
    if r < 0.4:
        arr = np.ones((size, size, 3), np.float32) * bg + nrng.normal(0, 0.03, (size, size, 3))
    elif r < 0.7:
        arr = nrng.random((size, size, 3)).astype(np.float32)
    else:
        period = rng.randint(3, 8)
        stripe = (np.arange(size) // period % 2).astype(np.float32)
        c = np.array(COLORS[rng.choice(list(COLORS))], np.float32) / 255.0
        mask = stripe[None, :, None] if rng.random() < 0.5 else stripe[:, None, None]
        arr = np.where(mask > 0, c, bg) * np.ones((size, size, 3), np.float32)
    return np.clip(arr, 0, 1).reshape(-1).astype(np.float32)


def watermark(px: np.ndarray, size: int = PIX) -> np.ndarray:
    """A semi-transparent white diagonal grid over the image (stock-photo style)."""
    img = px.reshape(size, size, 3).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    mask = ((xx + yy) % 8 < 2) | ((xx - yy) % 8 < 2)
    img[mask] = 0.45 * img[mask] + 0.55
    return img.reshape(-1)


def unsafe_picture(rng: random.Random, size: int = PIX) -> np.ndarray:
    """The stand-in for NSFW content: a magenta/black checkerboard of random cell size."""
    cell = rng.randint(3, 6)
    yy, xx = np.mgrid[0:size, 0:size]
    chk = ((xx // cell + yy // cell) % 2).astype(np.float32)[..., None]
    mag = np.array([0.9, 0.1, 0.7], np.float32)
    return (chk * mag + (1 - chk) * 0.05).astype(np.float32).reshape(-1)


def foreign_caption(a: Attrs, lang: str) -> str:
    w = _FOREIGN[lang]
    return _FOREIGN_TEMPLATE[lang].format(
        color=w[a.color], shape=w[a.shape], position=w[a.position]
    )


@dataclass
class Pool:
    urls: list[str]
    texts: list[str]
    pixels: np.ndarray  # [n, PIX*PIX*3] float32 in [0, 1]
    kinds: list[str]
    attrs: list[Attrs | None]  # what the IMAGE shows (None: no object)
    dup_of: np.ndarray  # index of the copied sample, -1 if not a near-duplicate
    language: list[str]
    width: list[int]
    height: list[int]


def make_pool(n: int, seed: int = 0) -> Pool:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    kinds_all = list(NOISE)
    weights = [NOISE[k] for k in kinds_all]
    texts: list[str] = []
    pix: list[np.ndarray] = []
    kinds: list[str] = []
    attrs: list[Attrs | None] = []
    dup_of = np.full(n, -1, np.int64)
    copied: list[int] = []  # preferential attachment: a copied source is copied again
    originals: list[int] = []
    for i in range(n):
        kind = rng.choices(kinds_all, weights=weights)[0]
        if kind == "near_duplicate" and not originals:
            kind = "clean"
        if kind == "near_duplicate":
            j = rng.choice(copied) if copied and rng.random() < 0.6 else rng.choice(originals)
            copied.append(j)
            dup_of[i] = j
            p = pix[j] + nrng.normal(0, 0.02, pix[j].shape).astype(np.float32)
            pix.append(np.clip(p, 0, 1))
            a = attrs[j]
            keep = rng.random() < 0.7 or a is None
            texts.append(texts[j] if keep else a.caption(rng))  # type: ignore[union-attr]
            attrs.append(a)
            kinds.append(kind)
            continue
        a = draw_attrs(rng)
        img_seed = rng.randrange(2**31)
        if kind == "off_topic":
            pix.append(_texture(rng, nrng))
            texts.append(a.caption(rng))
            attrs.append(None)
        elif kind == "unsafe":
            pix.append(unsafe_picture(rng))
            texts.append(a.caption(rng))
            attrs.append(None)
        else:
            img = render(a, img_seed)
            attrs.append(a)
            if kind == "mismatched":
                b = a
                while b.color == a.color or b.shape == a.shape:
                    b = draw_attrs(rng)
                texts.append(b.caption(rng))
            elif kind == "low_info":
                t = rng.choice(_LOW_INFO + ["IMG"])
                texts.append(f"IMG_{rng.randrange(10000):04d}.jpg" if t == "IMG" else t)
            elif kind == "partial":
                texts.append(
                    rng.choice([f"a {a.color} thing", f"something {a.color}"])
                    if rng.random() < 0.5
                    else rng.choice([f"a {a.shape}", f"the {a.shape}"])
                )
            else:
                texts.append(a.caption(rng))
            if kind == "watermark":
                img = watermark(img)
            pix.append(img)
            originals.append(i)
        kinds.append(kind)
    width, height, lang = [], [], []
    for i in range(n):
        if rng.random() < 0.12:
            w, h = rng.choice([(120, 300), (900, 200), (1500, 300), (180, 180), (150, 400)])
        else:
            w = rng.randint(256, 1024)
            h = int(w * rng.uniform(0.6, 1.6))
        width.append(w)
        height.append(h)
        r = rng.random()
        code = "en" if r >= 0.08 else ("de" if r < 0.04 else "fr")
        a = attrs[i]
        if code != "en" and a is not None and kinds[i] in ("clean", "watermark", "near_duplicate"):
            texts[i] = foreign_caption(a, code)
        else:
            code = "en"
        lang.append(code)
    urls = [f"http://pool.example/{seed}/{i}.jpg" for i in range(n)]
    return Pool(urls, texts, np.stack(pix), kinds, attrs, dup_of, lang, width, height)


@dataclass
class Labelled:
    """Clean pairs with their attributes (scorer training, FLYT task, evaluation)."""

    pixels: np.ndarray
    attrs: list[Attrs]
    captions: list[str]


def labelled(n: int, seed: int, balanced: bool) -> Labelled:
    rng = random.Random(seed)
    a = [draw_attrs(rng, balanced) for _ in range(n)]
    px = np.stack([render(x, rng.randrange(2**31)) for x in a])
    return Labelled(px, a, [x.caption(rng) for x in a])


def flagged(n: int, seed: int, kind: str) -> np.ndarray:
    """Separate pictures of one flagged kind (watermark / unsafe) for the safety heads."""
    rng = random.Random(seed)
    if kind == "unsafe":
        return np.stack([unsafe_picture(rng) for _ in range(n)])
    return np.stack([watermark(render(draw_attrs(rng), rng.randrange(2**31))) for _ in range(n)])


TASKS = {
    "color": list(COLORS),
    "shape": SHAPES,
    "position": POSITIONS,
    "background": list(BACKGROUNDS),
}


def task_labels(attrs: list[Attrs], task: str) -> np.ndarray:
    names = TASKS[task]
    return np.array([names.index(getattr(a, task)) for a in attrs], np.int64)


def class_prompts(task: str, per_class: int = 16, seed: int = 5) -> dict[str, list[str]]:
    """Prompt ensembles: captions naming the class, the other attributes random (like
    CLIP's templates, but in this world's words)."""
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for name in TASKS[task]:
        caps = []
        for _ in range(per_class):
            a = draw_attrs(rng, balanced=True)
            a = Attrs(**{**a.__dict__, task: name})
            caps.append(a.caption(rng))
        out[name] = caps
    return out


def aesthetic_rating(px: np.ndarray, size: int = PIX) -> np.ndarray:
    """A generated "human rating" for the aesthetic head: contrast of the picture against
    its own border plus colour saturation (plain or noisy pictures rate low)."""
    img = px.reshape(-1, size, size, 3)
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)
    contrast = np.abs(img - border.mean(1)[:, None, None]).mean((1, 2, 3))
    sat = (img.max(-1) - img.min(-1)).mean((1, 2))
    return (10 * contrast + 2 * sat).astype(np.float32)
