"""Generated mini-DataComp pool with realistic noise, and the held-out evaluation tasks.

Noise kinds (recorded per sample in `kind`): clean, mismatched (caption of other
attributes), near_duplicate (a re-render of an earlier sample with pixel noise, same
caption, new URL), off_topic (no shape drawn: background or noise, with a shape caption),
low_info (caption like "IMG_0042.jpg" or "photo"). Sizes and languages vary so the
DataComp basic filter has something to remove.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from laion_spark.demo.synthetic import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    make_samples,
    random_attributes,
    render,
)

PIX = 20  # images are rendered at PIX x PIX: enough for colour and coarse shape


@dataclass
class Pool:
    urls: list[str]
    texts: list[str]
    pixels: np.ndarray  # [n, PIX*PIX*3] float32 in [0, 1]
    kinds: list[str]
    language: list[str]
    width: list[int]
    height: list[int]


def pixels(img) -> np.ndarray:
    return np.asarray(img, np.float32).reshape(-1) / 255.0


def make_pool(n: int, seed: int = 0) -> Pool:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    base = make_samples(n, seed=seed, mismatch_rate=0.25)
    texts, pix, kinds = [], [], []
    for i, s in enumerate(base):
        r = rng.random()
        if i > 20 and r < 0.15:  # near-duplicate of an earlier sample
            j = rng.randrange(i)
            p = pix[j] + nrng.normal(0, 0.02, pix[j].shape).astype(np.float32)
            texts.append(texts[j])
            pix.append(np.clip(p, 0, 1))
            kinds.append("near_duplicate")
            continue
        if r < 0.25:  # off-topic: nothing drawn, but a caption that names a shape
            bg = BACKGROUNDS[rng.choice(list(BACKGROUNDS))]
            arr = np.ones((PIX, PIX, 3), np.float32) * np.array(bg, np.float32) / 255.0
            if rng.random() < 0.5:
                arr = nrng.random((PIX, PIX, 3)).astype(np.float32)
            texts.append(random_attributes(rng).caption(rng))
            pix.append(arr.reshape(-1))
            kinds.append("off_topic")
            continue
        img = pixels(render(s.attrs, PIX, s.image_seed))
        if r < 0.35:
            texts.append(
                rng.choice(["photo", "image", f"IMG_{rng.randrange(10000):04d}.jpg", "untitled"])
            )
            kinds.append("low_info")
        else:
            texts.append(s.caption)
            kinds.append("mismatched" if s.mismatched else "clean")
        pix.append(img)
    width, height, lang = [], [], []
    for _ in range(n):
        if rng.random() < 0.12:
            w, h = rng.choice([(120, 300), (900, 200), (1500, 300), (180, 180)])
        else:
            w = rng.randint(256, 1024)
            h = int(w * rng.uniform(0.6, 1.6))
        width.append(w)
        height.append(h)
        lang.append("en" if rng.random() < 0.92 else rng.choice(["de", "fr"]))
    urls = [f"http://pool.example/{seed}/{i}.jpg" for i in range(n)]
    return Pool(urls, texts, np.stack(pix), kinds, lang, width, height)


def labelled(n: int, seed: int) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Held-out clean images with their colour, shape and full caption."""
    samples = make_samples(n, seed=seed)
    px = np.stack([pixels(render(s.attrs, PIX, s.image_seed)) for s in samples])
    return (
        px,
        [s.attrs.color for s in samples],
        [s.attrs.shape for s in samples],
        [s.caption for s in samples],
    )


def class_prompts(kind: str, per_class: int = 24, seed: int = 5) -> dict[str, list[str]]:
    """Prompt ensembles: captions mentioning the class, other attributes random."""
    rng = random.Random(seed)
    names = list(COLORS) if kind == "color" else SHAPES if kind == "shape" else None
    out: dict[str, list[str]] = {}
    if names is None:  # joint colour+shape classes (the FLYT training task)
        for c in COLORS:
            for s in SHAPES:
                out[f"{c} {s}"] = [f"a {c} {s}", f"photo of a {c} {s}", f"a {c} {s} on the left"]
        return out
    for name in names:
        caps = []
        for _ in range(per_class):
            a = random_attributes(rng)
            a = type(a)(
                name if kind == "color" else a.color,
                name if kind == "shape" else a.shape,
                a.position,
                a.background,
            )
            caps.append(a.caption(rng))
        out[name] = caps
    return out
