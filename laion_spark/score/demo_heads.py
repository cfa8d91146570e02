"""The demo's score models: stand-ins trained once on generated data and cached, like tiny-clip.

    heads = ensure_demo_heads(cfg.embed)    # DemoHeads: file paths + held-out metrics
    heads = configure_demo_heads(cfg)       # also points cfg.score at them (where unset)

Three models, each trained on generated, honestly labelled images
(laion_spark.demo.synthetic, seeds far from the demo's, so the demo's samples are held out):

- nsfw (punsafe): an MLP head over the embed model's image embeddings for the STAND-IN
  "unsafe" category - a synthetic hazard-stripes pattern (synthetic.STANDIN_UNSAFE_NOTE).
  It lets punsafe, safe mode and curation be seen working; it is not an NSFW detector, and
  the head file, its sidecar json, the demo output and docs/score.md all say so. Safe mode
  must hide every planted sample, so it trains on every training image plus a harder set
  (half stand-in unsafe, half watermarked, half low quality), and `standin_metrics` measures
  it on images made exactly as the demo serves and stores them.
- aesthetic: an MLP regressor (d -> 64 -> 32 -> 1) over the same embeddings on the generated
  quality signal (1 + 9 * quality; darker, duller, flatter images score lower). LAION's
  predictor is linear over a real CLIP; tiny-clip's 64-d embedding holds exposure
  non-linearly, so the demo's head has two hidden layers (held-out r2 0.75 linear vs 0.85).
- watermark image classifier (pwatermark): timm's tiny EfficientNet (`test_efficientnet`)
  with LAION's head shape (Linear-ReLU-Linear, class 0 = watermark), 48x48 input, trained on
  images with and without overlaid watermark text/logos. The score stage loads it exactly as
  it loads LAION's efficientnet_b3a `watermark_model_v1.pt`.

Cache: `$LAION_SPARK_CACHE/models/demo-heads-<VERSION>-<embed model id>/` (default
~/.cache/laion_spark), written under a file lock so concurrent processes train once; a
sidecar `demo-heads.json` holds what was trained, on what, and the held-out metrics.
First-run training costs about 40 CPU-seconds (measured 43.1 s of process CPU at load ~13
on the shared 2-core machine, where v1's recipe took 33.8 s); later runs load the files
(< 1 s).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laion_spark.demo.synthetic import STANDIN_UNSAFE, STANDIN_UNSAFE_NOTE, Sample, make_samples
from laion_spark.storage import cache_root

log = logging.getLogger(__name__)

# bump when the data, the recipe or an architecture changes: the cache key includes it
VERSION = "v2"
TRAIN_SEED = 3_000_017  # far from the demo (7) and tiny-clip (1_000_003, 2_000_003)
EVAL_SEED = 4_000_037
RENDER_SIZE = 96  # the demo serves 96-px JPEGs
TRAIN_RATES = {"unsafe_rate": 0.3, "watermark_rate": 0.5, "low_quality_rate": 0.3}
N_TRAIN_IMAGES = 3000  # the watermark classifier's training set
# the embedding heads train on all of them plus a harder set: the stand-in's misses were
# dark, watermarked and striped at once, rare at TRAIN_RATES
HARD_SEED = 3_100_019
HARD_RATES = {"unsafe_rate": 0.5, "watermark_rate": 0.5, "low_quality_rate": 0.5}
N_HARD = 1500
N_EVAL = 400  # held-out images (another seed) for every metric
# watermark classifier
WM_ARCH = "test_efficientnet"  # timm's tiny EfficientNet (~0.1 M parameters)
WM_SIZE = 48
WM_HIDDEN = 256  # LAION's head width
WM_STEPS = 250
WM_BATCH = 64
WM_LR = 6e-3
WM_THRESHOLD = 0.8  # LAION's watermark threshold
AESTHETIC_HIDDEN = [64, 32]

NSFW_NOTE = f"punsafe head for the {STANDIN_UNSAFE_NOTE}"
AESTHETIC_NOTE = (
    "demo aesthetic head: regresses a generated quality signal (1 + 9 * quality; darker, "
    "duller, flatter images score lower), not human aesthetic ratings"
)
WATERMARK_NOTE = (
    "demo watermark classifier: tiny timm EfficientNet with LAION's head, trained on "
    "generated images with and without overlaid watermark text/logos"
)


@dataclass
class DemoHeads:
    directory: str
    nsfw: str
    aesthetic: str
    watermark_image: str
    watermark_arch: str = WM_ARCH
    watermark_size: int = WM_SIZE
    meta: dict[str, Any] = field(default_factory=dict)
    trained: bool = False  # trained by this call (else loaded from the cache)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return self.meta.get("eval", {})


def cache_dir(model_id: str) -> Path:
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id)
    return cache_root() / "models" / f"demo-heads-{VERSION}-{tag}"


_FILES = {
    "nsfw": "nsfw-standin-unsafe.pt",
    "aesthetic": "aesthetic-standin-quality.pt",
    "watermark_image": f"watermark-{WM_ARCH}-{WM_SIZE}px.pt",
}
_META = "demo-heads.json"


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in (*_FILES.values(), _META))


def _heads(d: Path, trained: bool) -> DemoHeads:
    return DemoHeads(
        str(d),
        **{k: str(d / f) for k, f in _FILES.items()},
        meta=json.loads((d / _META).read_text()),
        trained=trained,
    )


def ensure_demo_heads(embed_cfg, clip=None) -> DemoHeads:
    """The demo's heads for the `embed:` model, training and caching them first if needed."""
    if clip is None:
        from laion_spark.models.clip import load_clip

        clip = load_clip(embed_cfg)
    d = cache_dir(clip.model_id)
    if _complete(d):
        return _heads(d, False)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the files
        try:
            if _complete(d):
                return _heads(d, False)
            _train_and_save(d, clip)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _heads(d, True)


def configure_demo_heads(cfg, clip=None) -> DemoHeads:
    """ensure_demo_heads, then set each score model the config leaves unset to the demo's."""
    heads = ensure_demo_heads(cfg.embed, clip)
    sc = cfg.score
    if not sc.nsfw_head:
        sc.nsfw_head = heads.nsfw
    if not sc.aesthetic_head:
        sc.aesthetic_head = heads.aesthetic
    if not sc.watermark_image_model and not sc.watermark_head:
        sc.watermark_image_model = heads.watermark_image
        sc.watermark_image_arch = heads.watermark_arch
        sc.watermark_image_size = heads.watermark_size
    return heads


# ------------------------------------------------------------------------------ training


def training_samples(n: int, seed: int) -> list[Sample]:
    return make_samples(n, seed=seed, **TRAIN_RATES)


def jpegs(samples: list[Sample], size: int = RENDER_SIZE) -> list[bytes]:
    return [s.jpeg(size) for s in samples]


def _train_and_save(d: Path, clip) -> None:
    import torch

    from laion_spark.models.heads import save_head
    from laion_spark.models.watermark import WatermarkModel

    t0, c0 = time.time(), time.process_time()
    train = training_samples(N_TRAIN_IMAGES, TRAIN_SEED)
    hard = make_samples(N_HARD, seed=HARD_SEED, **HARD_RATES)
    held = training_samples(N_EVAL, EVAL_SEED)
    train_jpg, held_jpg = jpegs(train), jpegs(held)
    emb_jpg = train_jpg + jpegs(hard)
    t_render = time.time() - t0

    t1 = time.time()
    emb_samples = train + hard
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as train_watermark: tiny-clip gains little from a second one
    try:
        x = np.asarray(clip.encode_images(emb_jpg), dtype=np.float32)
        xh = np.asarray(clip.encode_images(held_jpg), dtype=np.float32)
    finally:
        torch.set_num_threads(threads)
    nsfw, nsfw_eval = train_nsfw(x, emb_samples, xh, held)
    aest, aest_eval = train_aesthetic(x, emb_samples, xh, held)
    t_heads = time.time() - t1

    t2 = time.time()
    wm = train_watermark(train_jpg, [s.watermark for s in train])
    t_wm = time.time() - t2
    tmp_wm = d / (_FILES["watermark_image"] + ".tmp")
    torch.save(wm.state_dict(), tmp_wm)  # a plain state dict, like LAION's watermark_model_v1.pt
    ref = f"watermark-image:{WM_ARCH}:{_FILES['watermark_image']}"
    p = WatermarkModel(wm.eval(), WM_SIZE, 0, ref).predict_bytes(held_jpg)
    wm_eval = binary_metrics(p, np.array([s.watermark for s in held]), WM_THRESHOLD)

    meta = {
        "version": VERSION,
        "embed_model_id": clip.model_id,
        "standin_unsafe_category": STANDIN_UNSAFE,
        "notes": {"nsfw": NSFW_NOTE, "aesthetic": AESTHETIC_NOTE, "watermark": WATERMARK_NOTE},
        "train": {
            "seed": TRAIN_SEED,
            "images": N_TRAIN_IMAGES,
            "rates": TRAIN_RATES,
            "embedding_heads_images": len(emb_samples),
            "hard": {"seed": HARD_SEED, "images": N_HARD, "rates": HARD_RATES},
            "render_size": RENDER_SIZE,
            "watermark": {
                "arch": WM_ARCH,
                "image_size": WM_SIZE,
                "hidden": WM_HIDDEN,
                "steps": WM_STEPS,
                "batch": WM_BATCH,
                "lr": WM_LR,
            },
        },
        "eval": {
            "seed": EVAL_SEED,
            "images": N_EVAL,
            "nsfw": nsfw_eval,
            "aesthetic": aest_eval,
            "watermark": wm_eval,
        },
        "seconds": {
            "render": round(t_render, 1),
            "embedding_heads": round(t_heads, 1),
            "watermark": round(t_wm, 1),
            "total": round(time.time() - t0, 1),
            "cpu_total": round(time.process_time() - c0, 1),
        },
    }
    # write to temporary names, then rename: a reader never sees a half-written set
    tmp = {k: str(d / (f + ".tmp")) for k, f in _FILES.items()}
    save_head(tmp["nsfw"], "nsfw", nsfw, threshold=0.5, metrics=nsfw_eval, description=NSFW_NOTE)
    save_head(tmp["aesthetic"], "aesthetic", aest, metrics=aest_eval, description=AESTHETIC_NOTE)
    for f in _FILES.values():
        os.replace(d / (f + ".tmp"), d / f)
    (d / (_META + ".tmp")).write_text(json.dumps(meta, indent=2))
    os.replace(d / (_META + ".tmp"), d / _META)
    log.info("demo heads: trained in %ss: %s", meta["seconds"]["total"], meta["eval"])


def binary_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy at `threshold`, recall on positives, false-positive rate on negatives."""
    y = np.asarray(y, dtype=bool)
    hit = np.asarray(p) > threshold
    return {
        "threshold": threshold,
        "accuracy": round(float((hit == y).mean()), 4),
        "recall": round(float(hit[y].mean()) if y.any() else 1.0, 4),
        "false_positive_rate": round(float(hit[~y].mean()) if (~y).any() else 0.0, 4),
        "n": int(len(y)),
    }


def regression_metrics(p: np.ndarray, y: np.ndarray, split: float = 5.5) -> dict[str, float]:
    """r2, mean absolute error, and agreement on which side of `split` a sample lies."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    return {
        "r2": round(1.0 - float(((p - y) ** 2).sum()) / ss_tot, 4),
        "mae": round(float(np.abs(p - y).mean()), 4),
        "split": split,
        "side_accuracy": round(float(((p < split) == (y < split)).mean()), 4),
        "n": int(len(y)),
    }


def train_nsfw(x, samples, xh, held):
    from laion_spark.models.heads import Head, train_mlp

    y = np.array([s.unsafe for s in samples], dtype=np.float32)
    m = train_mlp("nsfw", x, y, epochs=100)
    p = Head("nsfw", m).predict(xh)
    return m, binary_metrics(p, np.array([s.unsafe for s in held]), 0.5)


def train_aesthetic(x, samples, xh, held):
    from laion_spark.models.heads import Head, train_mlp

    y = np.array([s.aesthetic for s in samples], dtype=np.float32)
    m = train_mlp("aesthetic", x, y, epochs=100, hidden=AESTHETIC_HIDDEN)
    p = Head("aesthetic", m).predict(xh)
    return m, regression_metrics(p, np.array([s.aesthetic for s in held]))


def train_watermark(
    images: list[bytes],
    labels: list[bool],
    arch: str = WM_ARCH,
    size: int = WM_SIZE,
    steps: int = WM_STEPS,
    batch: int = WM_BATCH,
    lr: float = WM_LR,
    seed: int = 0,
):
    """Fit a timm classifier with LAION's head on image bytes; class 0 = watermark (LAION)."""
    import torch
    import torch.nn.functional as F

    from laion_spark.models.watermark import decode, new_watermark_model

    # the same decode (resize + ImageNet normalisation) the score stage applies
    arrs = [decode(b, size) for b in images]
    keep = [i for i, a in enumerate(arrs) if a is not None]
    x = torch.from_numpy(np.stack([arrs[i] for i in keep]))
    y = torch.tensor([0 if labels[i] else 1 for i in keep])
    # one thread: a tiny model gains little from more, and idle OpenMP threads spin and
    # burn CPU that the Spark tasks running beside it need (measured: 2 threads used ~10x
    # the CPU time of 1 on the busy 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = new_watermark_model(arch, WM_HIDDEN)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.15
        )
        g = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            xb = x[idx]
            flip = torch.rand(batch, generator=g) < 0.5  # mirrored text is still a watermark
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


# ------------------------------------------------------------------------------ measuring


def demo_images(n_pages: int, seed: int, download) -> tuple[list[Sample], list[bytes]]:
    """The generated samples on the demo's pages and the bytes the download stage stores for
    them: the demo's generator, rates and 96-px JPEGs as its server sends them, then
    `download` (the demo's DownloadSettings) resizing and re-encoding them."""
    from laion_spark.demo.run import demo_pages
    from laion_spark.download.resize import process_image

    pages, bodies, _ = demo_pages(n_pages, "http://127.0.0.1:9", seed)
    samples, images = [], []
    for page in pages:
        for url, s in page["samples"].items():
            samples.append(s)
            images.append(process_image(bodies[url[url.find("/img/") :]], download).image)
    return samples, images


def held_out_images(n: int, seed: int, download) -> tuple[list[Sample], list[bytes]]:
    """`n` samples at the demo's planted rates (another seed), stored as the demo stores them."""
    from laion_spark.demo.run import DEMO_RATES
    from laion_spark.download.resize import process_image

    samples = make_samples(n, seed=seed, **DEMO_RATES)
    return samples, [process_image(b, download).image for b in jpegs(samples)]


def standin_metrics(
    clip, nsfw_head: str, samples: list[Sample], images: list[bytes], threshold: float
) -> dict[str, Any]:
    """binary_metrics of the stand-in head at `threshold` (safe mode's serve.punsafe_max),
    the lowest punsafe of a planted unsafe sample and the indices of those it misses."""
    from laion_spark.models.heads import load_head

    x = np.asarray(clip.encode_images(images), dtype=np.float32)
    p = load_head(nsfw_head, "nsfw").predict(x)
    y = np.array([s.unsafe for s in samples], dtype=bool)
    out: dict[str, Any] = binary_metrics(p, y, threshold)
    out["unsafe"] = int(y.sum())
    out["false_positives"] = int((p[~y] > threshold).sum())
    out["min_punsafe_unsafe"] = round(float(p[y].min()), 4) if y.any() else None
    out["missed"] = [samples[i].index for i in np.flatnonzero(y & (p <= threshold))]
    return out


def _main(argv: list[str] | None = None) -> None:
    """Recall and false-positive rate of the stand-in head at safe mode's threshold, on
    held-out images and on the demo's own samples (docs/score.md quotes the output)."""
    import argparse

    from laion_spark.config import load_config
    from laion_spark.demo.run import demo_config
    from laion_spark.models.clip import load_clip

    ap = argparse.ArgumentParser(prog="python -m laion_spark.score.demo_heads")
    ap.add_argument("--held-out", type=int, default=2000, help="held-out images")
    ap.add_argument("--seed", type=int, default=6_000_001, help="seed of the held-out images")
    ap.add_argument("--pages", type=int, default=200, help="demo pages per demo seed")
    ap.add_argument("--demo-seeds", default="7,1,2,3", help="demo seeds (7 = the default)")
    args = ap.parse_args(argv)
    cfg = demo_config(load_config("local"))
    clip = load_clip(cfg.embed)
    heads = ensure_demo_heads(cfg.embed, clip)
    thr = cfg.serve.punsafe_max
    sets = {
        f"held-out {args.held_out} (seed {args.seed})": held_out_images(
            args.held_out, args.seed, cfg.download
        )
    }
    for sd in (int(v) for v in args.demo_seeds.split(",") if v):
        sets[f"demo {args.pages} pages, seed {sd}"] = demo_images(args.pages, sd, cfg.download)
    for name, (samples, images) in sets.items():
        m = standin_metrics(clip, heads.nsfw, samples, images, thr)
        print(f"{name}: {json.dumps(m)}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    _main()
