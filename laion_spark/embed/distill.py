"""Distil a multilingual text tower into a CLIP model's text space, as M-CLIP was trained.

    meta = train_text_tower(clip, english, translated, "towers/xx", base="tiny")

Teacher: the CLIP model's own text tower on the English side of parallel captions. Student:
a transformers encoder (XLM-R style), mean-pooled, then a linear projection to CLIP's
dimension, trained with MSE between its output on the translation and the teacher's
embedding of the English caption (M-CLIP: MSE on 2M-7M machine-translated captions). The
result is written in M-CLIP's layout (models/text_tower.py), so it loads like released
weights.

`base`: "tiny" = a small XLM-R config and a tokenizer trained here with `tokenizers` on the
captions (what the demo and tests use: nothing can be downloaded); a directory or hub id of
a pretrained encoder + tokenizer (e.g. xlm-roberta-base) = M-CLIP's starting point; or an
existing tower directory = continue training it.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np

from laion_spark.models.text_tower import (
    CONFIG,
    MAX_TOKENS,
    TINY_TOWER,
    TINY_VERSION,
    build_module,
    load_text_tower,
    save_text_tower,
)

log = logging.getLogger(__name__)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0..4

# the tiny tower's recipe (bump TINY_VERSION in text_tower.py when it changes)
TINY_PAIRS = 6000
TINY_SEED = 3_000_017  # far from the seeds tests and the demo use
TINY_EVAL_SEED = 4_000_037
TINY_STEPS = 300
TINY_BATCH = 128
TINY_LR = 2e-3
TINY_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


def train_tokenizer(texts: list[str], vocab_size: int = 2000, max_length: int = MAX_TOKENS):
    """A SentencePiece-style Unigram tokenizer (XLM-R's kind) trained on `texts`, wrapped as a
    transformers fast tokenizer with XLM-R's special tokens: <s> caption </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(texts, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=max_length,
    )


def tiny_encoder(tokenizer: Any, max_length: int = 32, **sizes: int):
    """A small XLM-RoBERTa (random weights) for `tokenizer`'s vocabulary."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    dims = {**TINY_ENCODER, **sizes}
    cfg = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_length + 2,  # XLM-R positions start after padding_idx
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **dims,
    )
    # the pooler is unused (M-CLIP mean-pools) but kept: AutoModel builds one when loading
    return XLMRobertaModel(cfg)


def new_student(
    base: str, texts: list[str], out_dim: int, vocab_size: int = 2000, max_length: int = 32
) -> tuple[Any, Any, str]:
    """(module, tokenizer, model_base name) to start distilling from (see the module doc)."""
    from pathlib import Path

    if base == "tiny":
        tokenizer = train_tokenizer(texts, vocab_size, max_length)
        return build_module(tiny_encoder(tokenizer, max_length), out_dim), tokenizer, "tiny-xlmr"
    p = Path(base).expanduser()
    if (p / CONFIG).is_file() and "numDims" in (p / CONFIG).read_text():
        tower = load_text_tower(str(p), device="cpu", key="--base")
        return tower.module.train(), tower.tokenizer, str(tower.meta.get("model_base", p.name))
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base)
    return build_module(encoder, out_dim), tokenizer, base


def _teacher_embeddings(teacher: Any, english: list[str], chunk: int = 1024) -> np.ndarray:
    return np.concatenate(
        [teacher.encode_text(english[i : i + chunk]) for i in range(0, len(english), chunk)]
    )


def distill(
    module: Any,
    tokenizer: Any,
    texts: list[str],
    targets: np.ndarray,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    device: str = "cpu",
    max_length: int = 32,
    seed: int = 0,
    val_fraction: float = 0.05,
) -> dict[str, float]:
    """MSE between module(texts) and the teacher's `targets`; returns held-out MSE / cosine."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(texts)
    order = rng.permutation(n)
    n_val = max(1, int(n * val_fraction)) if n > 20 else 0
    val, train = order[:n_val], order[n_val:]
    # tokenised once; each batch is cut to its longest caption
    tok = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    ids, mask = tok["input_ids"], tok["attention_mask"]
    y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    module.to(device).train()
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)

    def batch(idx):
        m = mask[idx]
        width = int(m.sum(1).max())
        return ids[idx, :width].to(device), m[:, :width].to(device), y[idx].to(device)

    t0 = time.time()
    loss = torch.tensor(0.0)
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(train, size=min(batch_size, len(train)), replace=False))
        x, m, t = batch(idx)
        loss = F.mse_loss(module(x, m), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log.info(
                "distill: step %d/%d mse %.5f %.0fs", step, steps, loss.item(), time.time() - t0
            )
    module.eval()
    stats = {"train_mse": round(float(loss.item()), 6), "steps": steps}
    if n_val:
        with torch.inference_mode():
            x, m, t = batch(torch.from_numpy(val))
            out = module(x, m)
            stats["val_mse"] = round(float(F.mse_loss(out, t)), 6)
            stats["val_cosine"] = round(float(F.cosine_similarity(out, t).mean()), 4)
    module.to("cpu")
    return stats


def train_text_tower(
    teacher: Any,
    english: list[str],
    texts: list[str],
    out_dir: str,
    base: str = "tiny",
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-3,
    device: str = "auto",
    max_length: int = 32,
    vocab_size: int = 2000,
    seed: int = 0,
    thresholds: dict[str, float] | None = None,
    extra_meta: dict[str, Any] | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Distil a tower from parallel captions (`english[i]` translated as `texts[i]`) into
    `teacher`'s text space and save it to `out_dir`; returns its metadata.

    `thresholds` (per group) go into the sidecar; default: the teacher's own multilingual
    threshold, which a student that imitates the teacher inherits (calibrate when you can,
    e.g. calibrate_on_generated for the demo's data). `threads`: torch CPU threads while
    training (0 = torch's default)."""
    from laion_spark.models.device import resolve_device

    if len(english) != len(texts) or not texts:
        raise ValueError(
            f"need equal, non-empty lists of captions ({len(english)} vs {len(texts)})"
        )
    import torch

    t0 = time.time()
    dev = resolve_device(device)
    targets = _teacher_embeddings(teacher, list(english))
    torch.manual_seed(seed)  # the student's initial weights
    module, tokenizer, model_base = new_student(
        base, list(texts) + list(english), teacher.dim, vocab_size, max_length
    )
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        stats = distill(
            module, tokenizer, list(texts), targets, steps, batch_size, lr, dev, max_length, seed
        )
    finally:
        torch.set_num_threads(before)
    thr = thresholds or {
        "multi": float(teacher.thresholds.get("multi", 0.26)),
        "nolang": float(teacher.thresholds.get("multi", 0.26)),
    }
    meta = {
        "model_base": model_base,
        "teacher_model_id": teacher.model_id,
        "pairs": len(texts),
        "train": {
            "base": base,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "max_length": max_length,
            "seed": seed,
            "device": dev,
        },
        "eval": stats,
        "thresholds": thr,
        "threshold_source": "given" if thresholds else "teacher",
        "train_seconds": round(time.time() - t0, 1),
        **(extra_meta or {}),
    }
    save_text_tower(module, tokenizer, out_dir, meta)
    return meta


def calibrate_on_generated(
    out_dir: str, teacher: Any, n: int = 300, seed: int = TINY_EVAL_SEED
) -> dict[str, float]:
    """The tower's CLIP-filter threshold on held-out generated pairs in the demo's other
    languages (half mismatched): the cosine that best separates matched from mismatched,
    and what the teacher's English text tower scores on the same captions, for comparison."""
    from laion_spark.demo.synthetic import CAPTION_LANGUAGES, make_samples

    tower = load_text_tower(out_dir, device="cpu", key="calibration")
    samples = make_samples(n, seed=seed, mismatch_rate=0.5, languages=CAPTION_LANGUAGES)
    img = teacher.encode_images([s.jpeg(64) for s in samples])
    bad = np.array([s.mismatched for s in samples])
    caps = [s.caption for s in samples]
    out: dict[str, float] = {}
    for name, txt in (("tower", tower.encode_text(caps)), ("clip_text", teacher.encode_text(caps))):
        sim = (img * txt).sum(1)
        cands = np.sort(sim)
        accs = [((sim >= c) == ~bad).mean() for c in cands]
        best = int(np.argmax(accs))
        out[f"{name}_threshold"] = round(float(cands[best]), 4)
        out[f"{name}_filter_accuracy"] = round(float(accs[best]), 4)
        out[f"{name}_matched_cos_mean"] = round(float(sim[~bad].mean()), 4)
        out[f"{name}_mismatched_cos_mean"] = round(float(sim[bad].mean()), 4)
    return out


def tiny_pairs(n: int = TINY_PAIRS, seed: int = TINY_SEED) -> tuple[list[str], list[str]]:
    """English captions and their translations (English included: captions the language id
    gets wrong reach the tower too) from the demo's templates."""
    from laion_spark.demo.synthetic import CAPTION_LANGUAGES, parallel_captions

    pairs = parallel_captions(n, seed, ("en", *CAPTION_LANGUAGES))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def train_tiny_tower(clip: Any, out_dir: str, log: bool = True) -> dict[str, Any]:
    """The demo's tower: tiny XLM-R + local tokenizer distilled from tiny-clip on generated
    parallel captions; threshold calibrated like tiny-clip's. Written to a temp directory,
    then moved into place (the caller holds the lock)."""
    import os
    import shutil

    t0 = time.time()
    random.seed(0)
    tmp = f"{out_dir}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        english, texts = tiny_pairs()
        meta = train_text_tower(
            clip,
            english,
            texts,
            tmp,
            base="tiny",
            steps=TINY_STEPS,
            batch_size=TINY_BATCH,
            lr=TINY_LR,
            device="cpu",
            vocab_size=1000,
            seed=TINY_SEED,
            extra_meta={"name": TINY_TOWER, "version": TINY_VERSION},
            threads=1,  # tiny ops: more OpenMP threads only spin on a shared machine
        )
        cal = calibrate_on_generated(tmp, clip)
        meta["calibration"] = cal
        meta["thresholds"] = {"multi": cal["tower_threshold"], "nolang": cal["tower_threshold"]}
        meta["threshold_source"] = "calibrated on generated pairs"
        meta["train_seconds"] = round(time.time() - t0, 1)
        import json

        from laion_spark.models.text_tower import SIDECAR

        with open(os.path.join(tmp, SIDECAR), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log:
        logging.getLogger(__name__).info(
            "tiny tower: trained in %ss: %s", meta["train_seconds"], cal
        )
    return meta


def read_pairs(
    source: str, en_column: str = "en", text_column: str = "text", spark: Any = None
) -> tuple[list[str], list[str]]:
    """Parallel captions from a parquet file/folder, a Delta table folder, or (with `spark`)
    a catalog table: the English caption and its translation, rows with either empty
    dropped."""
    from pathlib import Path

    cols = [en_column, text_column]
    p = Path(source).expanduser()
    if (p / "_delta_log").is_dir():
        from deltalake import DeltaTable

        df = DeltaTable(str(p)).to_pandas(columns=cols)
    elif p.exists():
        import pyarrow.parquet as pq

        df = pq.read_table(str(p), columns=cols).to_pandas()
    elif spark is not None:
        df = spark.read.table(source).select(*cols).toPandas()
    else:
        raise FileNotFoundError(f"{source}: no parquet file/folder or Delta table there")
    df = df.dropna()
    df = df[(df[en_column].str.strip() != "") & (df[text_column].str.strip() != "")]
    return df[en_column].astype(str).tolist(), df[text_column].astype(str).tolist()
