"""tiny-clip: the project's own small CLIP, trained on generated shape/colour/position pairs.

It is a normal open_clip architecture (a small ViT + small text transformer, registered with
open_clip under the name "tiny-clip") and a normal open_clip checkpoint (a state_dict saved
with torch.save), loaded through the same `load_clip` path as any pretrained model. Training
takes about a minute or two on 2 CPU cores and happens once per machine: the checkpoint is
cached at `$LAION_SPARK_CACHE/models/tiny-clip-<VERSION>/` (default ~/.cache/laion_spark),
under a file lock so concurrent processes (pytest workers, Spark workers) train only once.

A sidecar `<checkpoint>.json` stores metadata, including the CLIP-filter threshold calibrated
on held-out matched/mismatched pairs: tiny-clip's cosines live on a different scale from real
CLIP's, so LAION's 0.28 would mean nothing for it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from laion_spark.storage import cache_root

TINY_NAME = "tiny-clip"
# bump when the architecture, data or recipe changes: the cache key includes it
VERSION = "v1"
IMAGE_SIZE = 32

TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "layers": 2,
        "width": 64,
        "patch_size": 8,
        "head_width": 32,
    },
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}

# training recipe (deterministic seeds; CPU float math may still differ across machines)
TRAIN_SAMPLES = 4000
TRAIN_SEED = 1_000_003  # far from the seeds tests/demo use, so their samples are held out
EVAL_SEED = 2_000_003
STEPS = int(os.environ.get("LAION_SPARK_TINY_STEPS", "600"))
BATCH = 128
LR = 3e-3

log = logging.getLogger(__name__)


def model_dir() -> Path:
    return cache_root() / "models" / f"{TINY_NAME}-{VERSION}"


def checkpoint_path() -> Path:
    return model_dir() / "open_clip_pytorch_model.bin"


_registered = False


def register() -> None:
    """Make "tiny-clip" a known open_clip architecture (via open_clip.add_model_config)."""
    global _registered
    if _registered:
        return
    import open_clip

    from laion_spark.storage import write_bytes

    if TINY_NAME not in open_clip.list_models():
        # in the cache, not a temp dir: every process registers it (one temp dir each was
        # left behind), and open_clip re-reads its config paths whenever one is added
        d = cache_root() / "models" / f"{TINY_NAME}-config"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{TINY_NAME}.json"
        text = json.dumps(TINY_CONFIG)
        if not p.is_file() or p.read_text() != text:
            write_bytes(str(p), text.encode())  # atomic: readers never see half
        open_clip.add_model_config(p)
    _registered = True


def ensure_tiny_clip(verbose: bool = True) -> str:
    """Path of the tiny-clip checkpoint, training and caching it first if needed."""
    ckpt = checkpoint_path()
    if ckpt.is_file() and Path(str(ckpt) + ".json").is_file():
        return str(ckpt)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with open(ckpt.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the file
        try:
            if not (ckpt.is_file() and Path(str(ckpt) + ".json").is_file()):
                _train_and_save(ckpt, verbose=verbose)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(ckpt)


def _tensors(samples: list, preprocess: Any, tokenizer: Any):
    import torch

    imgs = torch.stack([preprocess(s.image(64)) for s in samples])
    toks = tokenizer([s.caption for s in samples])
    return imgs, toks


def _train_and_save(ckpt: Path, verbose: bool = True) -> None:
    import open_clip
    import torch
    import torch.nn.functional as F

    from laion_spark.demo.synthetic import make_samples

    register()
    t0 = time.time()
    # one thread: these ops are tiny, and extra OpenMP threads only spin on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    preprocess = open_clip.image_transform(IMAGE_SIZE, is_train=False)
    tokenizer = open_clip.get_tokenizer(TINY_NAME)
    # images rendered at 64px like the demo's, then the model's own eval preprocessing
    train = make_samples(TRAIN_SAMPLES, seed=TRAIN_SEED)
    imgs, toks = _tensors(train, preprocess, tokenizer)
    # extra captions of the same attributes (other templates) so text side sees variety
    rng = random.Random(TRAIN_SEED)
    alt_toks = tokenizer([s.attrs.caption(rng) for s in train])
    keys = {a: i for i, a in enumerate(sorted({s.attrs for s in train}, key=repr))}
    attr_ids = torch.tensor([keys[s.attrs] for s in train])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS, pct_start=0.1)
    model.train()
    n = len(train)
    for step in range(STEPS):
        idx = torch.randint(0, n, (BATCH,))
        # flip horizontally never (positions matter); small pixel noise as augmentation
        x = imgs[idx] + 0.05 * torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
        t = torch.where(torch.rand(BATCH, 1) < 0.5, toks[idx], alt_toks[idx])
        img_f, txt_f, scale = model(x, t)
        logits = scale * img_f @ txt_f.t()
        # same-attribute pairs in a batch are true positives too: soft targets over them
        a = attr_ids[idx]
        same = (a[:, None] == a[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t())) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if verbose and step % 50 == 0:
            el = time.time() - t0
            log.info("tiny-clip: step %d/%d loss %.3f %.0fs", step, STEPS, loss.item(), el)
    torch.set_num_threads(threads)
    model.eval()
    stats = evaluate(model, preprocess, tokenizer)
    stats["train_seconds"] = round(time.time() - t0, 1)
    meta = {
        "name": TINY_NAME,
        "version": VERSION,
        "config": TINY_CONFIG,
        "train": {"samples": TRAIN_SAMPLES, "seed": TRAIN_SEED, "steps": STEPS, "batch": BATCH},
        "eval": stats,
        # one calibrated threshold for every language group: the captions are English only
        "thresholds": {"en": stats["threshold"], "multi": stats["threshold"]},
    }
    tmp = ckpt.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)  # a plain state_dict: what open_clip.load_checkpoint reads
    Path(str(tmp) + ".json").write_text(json.dumps(meta, indent=2))
    os.replace(str(tmp) + ".json", str(ckpt) + ".json")
    os.replace(tmp, ckpt)
    if verbose:
        log.info("tiny-clip: trained in %ss: %s", stats["train_seconds"], stats)


def evaluate(model: Any, preprocess: Any, tokenizer: Any, n: int = 300) -> dict[str, float]:
    """Held-out retrieval and matched/mismatched cosine gap; picks the filter threshold."""
    import numpy as np
    import torch

    from laion_spark.demo.synthetic import make_samples

    samples = make_samples(n, seed=EVAL_SEED, mismatch_rate=0.5)
    imgs, toks = _tensors(samples, preprocess, tokenizer)
    with torch.inference_mode():
        fi = torch.nn.functional.normalize(model.encode_image(imgs), dim=-1)
        ft = torch.nn.functional.normalize(model.encode_text(toks), dim=-1)
    sim = (fi * ft).sum(-1).numpy()
    bad = np.array([s.mismatched for s in samples])
    good_sim, bad_sim = sim[~bad], sim[bad]
    # threshold maximising accuracy of "keep matched, drop mismatched" on held-out pairs
    cands = np.sort(sim)
    accs = [((sim >= c) == ~bad).mean() for c in cands]
    thr = float(cands[int(np.argmax(accs))])
    # image -> text top-1 among the matched pairs' captions
    g = np.where(~bad)[0]
    s = (fi[g] @ ft[g].t()).numpy()
    top1 = float((s.argmax(1) == np.arange(len(g))).mean())
    return {
        "matched_cos_mean": round(float(good_sim.mean()), 4),
        "mismatched_cos_mean": round(float(bad_sim.mean()), 4),
        "threshold": round(thr, 4),
        "filter_accuracy": round(float(max(accs)), 4),
        "top1_image_to_text": round(top1, 4),
        "candidates": int(len(g)),
    }
