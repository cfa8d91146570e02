"""The score plan (what models to run, built on the driver) and scoring of one batch.

`ScorePlan` is small and picklable: file paths, thresholds, prompt embeddings and the word
list. Each Python worker loads the heads once (models.device.cached) and scores Arrow batches with
`score_batch`, a pure function of a pandas batch, so it is testable without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from laion_spark.models.device import cached, file_key
from laion_spark.models.heads import Head, load_head
from laion_spark.score.toxicity import WordListToxicity
from laion_spark.score.zeroshot import PromptEmbeddings, WordMatcher, zero_shot_tags

ABSENT = "absent"
SCORE_COLUMNS = ("punsafe", "pwatermark", "toxicity", "aesthetic")


@dataclass
class ScorePlan:
    model_id: str
    nsfw_head: str | None = None
    watermark_head: str | None = None
    aesthetic_head: str | None = None
    toxicity_head: str | None = None
    watermark_image_model: str | None = None
    watermark_image_arch: str = "efficientnet_b3a"
    watermark_image_size: int = 256
    prompts: PromptEmbeddings | None = None
    zero_shot_ref: str = ABSENT
    child_words: list[str] = field(default_factory=list)
    toxic_words: list[str] | None = None  # None = no word-list scorer
    punsafe_threshold: float = 0.5
    pwatermark_threshold: float = 0.8
    toxicity_threshold: float = 0.5
    device: str = "auto"
    refs: dict[str, str] = field(default_factory=dict)  # kind -> model ref (driver-checked)

    @property
    def needs_images(self) -> bool:
        return bool(self.watermark_image_model)

    @property
    def needs_text(self) -> bool:
        return self.prompts is not None or self.toxic_words is not None


class Models:
    """The heads a plan names, loaded once per worker (laion_spark.models.device.cached)."""

    def __init__(self, plan: ScorePlan):
        def head(path: str | None, kind: str) -> Head | None:
            if not path:
                return None
            return cached(("head", kind, *file_key(path)), lambda: load_head(path, kind))

        self.nsfw = head(plan.nsfw_head, "nsfw")
        self.watermark = head(plan.watermark_head, "watermark")
        self.aesthetic = head(plan.aesthetic_head, "aesthetic")
        self.toxicity = head(plan.toxicity_head, "toxicity")
        self.watermark_image = None
        if plan.watermark_image_model:
            from laion_spark.models.watermark import load_watermark_model

            p = plan.watermark_image_model
            self.watermark_image = cached(
                ("wm-image", *file_key(p), plan.watermark_image_arch),
                lambda: load_watermark_model(
                    p, plan.watermark_image_arch, plan.watermark_image_size
                ),
            )
        self.words = (
            cached(("words", tuple(plan.toxic_words)), lambda: WordListToxicity(plan.toxic_words))
            if plan.toxic_words is not None
            else None
        )
        self.child = cached(
            ("child", tuple(plan.child_words)), lambda: WordMatcher(plan.child_words)
        )


def _matrix(col: pd.Series, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 matrix of a list column and a mask of valid rows (right length, finite)."""
    n = len(col)
    lens = np.array([len(v) if v is not None else -1 for v in col])
    if dim is None:
        good = lens[lens > 0]
        dim = int(np.bincount(good).argmax()) if len(good) else 0
    ok = lens == dim
    x = np.zeros((n, max(dim, 1)), dtype=np.float32)
    if ok.any():
        x[ok] = np.stack(
            [np.asarray(v, dtype=np.float32) for v, k in zip(col, ok, strict=True) if k]
        )
        ok &= np.isfinite(x).all(axis=1)
        x[~ok] = 0.0
    return x, ok


def arrow_matrix(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """`_matrix` of an Arrow list column: when every row holds the same number of values
    (the usual case) the values are reshaped as they lie, with no Python object per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    lens = pc.fill_null(pc.list_value_length(col), -1).to_numpy()
    dim = int(lens[0]) if len(lens) else 0
    values = col.flatten()
    if dim <= 0 or not (lens == dim).all() or values.null_count:
        return _matrix(pd.Series(col.to_numpy(zero_copy_only=False)), None)
    x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    x = x.reshape(len(col), dim)
    ok = np.isfinite(x).all(axis=1)
    if not ok.all():
        x = x.copy()
        x[~ok] = 0.0
    return x, ok


def score_batch(
    pdf: pd.DataFrame,
    plan: ScorePlan,
    models: Models,
    device: str = "cpu",
    image_matrix: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Scores for one batch with columns sample_id, image_embedding[, text_embedding, text, image];
    `image_matrix` = (vectors, valid rows) stands for image_embedding when the caller has it
    (`arrow_matrix`)."""
    n = len(pdf)
    img, ok = image_matrix or _matrix(pdf["image_embedding"], None)
    texts = list(pdf["text"]) if "text" in pdf else [None] * n
    out: dict[str, Any] = {c: np.full(n, np.nan, dtype=np.float32) for c in SCORE_COLUMNS}
    refs: list[dict[str, str]] = [dict(plan.refs) for _ in range(n)]
    flags: list[list[str]] = [[] if k else ["bad_embedding"] for k in ok]
    tags: list[str | None] = [None] * n

    def put(col: str, head: Head | None, x: np.ndarray, mask: np.ndarray) -> None:
        if head is None or not mask.any() or x.shape[1] != head.in_dim:
            return
        out[col][mask] = head.predict(x[mask], device)

    put("punsafe", models.nsfw, img, ok)
    put("aesthetic", models.aesthetic, img, ok)
    # pwatermark: image classifier (LAION's), else the embedding head, per row
    if models.watermark_image is not None and "image" in pdf:
        out["pwatermark"] = models.watermark_image.predict_bytes(list(pdf["image"]), device)
        missing = np.isnan(out["pwatermark"])
        for i in np.flatnonzero(missing):
            refs[i]["watermark"] = (
                models.watermark.model_ref if models.watermark else f"{ABSENT}: no image"
            )
        if models.watermark is not None:
            put("pwatermark", models.watermark, img, ok & missing)
    else:
        put("pwatermark", models.watermark, img, ok)
    # toxicity: text-embedding head where the text embedding is usable, else the word list
    tox_done = np.zeros(n, dtype=bool)
    if models.toxicity is not None and "text_embedding" in pdf:
        txt, tok = _matrix(pdf["text_embedding"], models.toxicity.in_dim)
        put("toxicity", models.toxicity, txt, tok)
        tox_done = tok
    if models.words is not None:
        rest = np.flatnonzero(~tox_done)
        if len(rest):
            out["toxicity"][rest] = models.words.score([texts[i] for i in rest])
            for i in rest:
                refs[i]["toxicity"] = models.words.model_ref
    elif models.toxicity is not None:
        for i in np.flatnonzero(~tox_done):
            refs[i]["toxicity"] = f"{ABSENT}: no text embedding"
    # zero-shot LAION-400M tags
    if plan.prompts is not None and img.shape[1] == plan.prompts.dim and ok.any():
        idx = np.flatnonzero(ok)
        t, f = zero_shot_tags(img[idx], [texts[i] for i in idx], plan.prompts, models.child)
        for j, i in enumerate(idx):
            tags[i] = t[j]
            flags[i].extend(f[j])
    # threshold flags
    for col, thr, name in (
        ("punsafe", plan.punsafe_threshold, "nsfw"),
        ("pwatermark", plan.pwatermark_threshold, "watermark"),
        ("toxicity", plan.toxicity_threshold, "toxic"),
    ):
        for i in np.flatnonzero(out[col] > thr):
            flags[i].append(name)
    for i in np.flatnonzero(~ok):
        for c in SCORE_COLUMNS:
            if c != "toxicity":  # text-based toxicity does not need the image embedding
                out[c][i] = np.nan
    res = pd.DataFrame({"sample_id": pdf["sample_id"].values, "model_id": plan.model_id})
    for c in SCORE_COLUMNS:
        # NaN -> None so Spark writes null, never a made-up number
        res[c] = pd.Series(out[c], dtype="float32").astype(object).where(~np.isnan(out[c]), None)
    res["nsfw_tag"] = tags
    res["flags"] = flags
    res["score_models"] = refs
    return res
