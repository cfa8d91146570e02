"""A generated pool written straight into the tables, with known rates, to check a report.

    planted = write_generated_pool(spark, cfg, tables, n=3000, images=True)
    planted.expected_nsfw_share, planted.term, planted.term_nsfw_rate

No pipeline run: candidates, extract_stats, images, embeddings, scores, subsets, a
takedown and two `runs` rows are built as pandas frames and written with `Tables.upsert`
(the one writer), so tests and benchmarks/bench_report.py get a pool of any size in
seconds. What is planted, at known rates:

- zero-shot tags: NSFW at `nsfw_rate`, UNSURE at `unsure_rate` (the rest UNLIKELY), and a
  `drop` flag on a fifth of the NSFW/UNSURE ones; punsafe drawn to agree with the tag;
- toxic captions at `toxic_rate`: a word of conf/prompts/toxic_words.txt in the caption,
  scored by the real word-list scorer (score.toxicity.WordListToxicity);
- a probe term (`term`, in `term_rate` of captions) whose samples are tagged NSFW at
  `term_nsfw_rate`, far above the rest: what a keyword probe must find.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from laion_spark.config import Config
from laion_spark.tables import Tables, spark_schema

MODEL_ID = "generated@000000000000"
THRESHOLDS = {"en": 0.28, "*": 0.26}
_ADJ = ["red", "blue", "green", "small", "large", "old", "new", "bright", "quiet", "wooden"]
_NOUN = ["cat", "house", "tree", "bicycle", "boat", "garden", "river", "chair", "bridge", "road"]
_PLACE = ["in the city", "by the sea", "at night", "in winter", "on a hill", "in the park"]
_LANGS = [("en", "en", 0.70), ("de", "multi", 0.08), ("fr", "multi", 0.07), ("es", "multi", 0.05),
          (None, "nolang", 0.10)]
_LICENSES = [("cc-by-4.0", 0.25), ("cc0-1.0", 0.05), (None, 0.70)]
_STATUS = [("success", 0.90), ("http_error", 0.06), ("timeout", 0.04)]
_SIDES = np.array([200, 256, 320, 480, 512, 640, 800, 1024, 1280, 1920, 3000, 5000])


@dataclass
class Planted:
    n: int
    seed: int
    nsfw_rate: float
    unsure_rate: float
    toxic_rate: float
    term: str
    term_rate: float
    term_nsfw_rate: float
    model_id: str = MODEL_ID

    @property
    def expected_nsfw_share(self) -> float:
        """Share of tagged samples tagged NSFW, in expectation."""
        return (1 - self.term_rate) * self.nsfw_rate + self.term_rate * self.term_nsfw_rate


def _sid(i: int, seed: int) -> str:
    return hashlib.md5(f"generated-{seed}-{i}".encode()).hexdigest()


def _png(rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _choice(rng: np.random.Generator, options: list, n: int) -> np.ndarray:
    values = [o[0] for o in options]
    p = np.array([o[-1] for o in options], dtype=float)
    idx = rng.choice(len(values), size=n, p=p / p.sum())
    return np.array(values, dtype=object)[idx]


def generated_frames(
    n: int = 3000,
    seed: int = 0,
    nsfw_rate: float = 0.08,
    unsure_rate: float = 0.12,
    toxic_rate: float = 0.05,
    term: str = "lighthouse",
    term_rate: float = 0.06,
    term_nsfw_rate: float = 0.5,
    images: bool = False,
) -> tuple[dict[str, pd.DataFrame], Planted]:
    """The pool as one pandas frame per table, and what was planted."""
    from laion_spark.score.toxicity import WordListToxicity
    from laion_spark.score.zeroshot import PROMPTS_DIR, read_list

    rng = np.random.default_rng(seed)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [_sid(i, seed) for i in range(n)]
    lang_codes = _choice(rng, [(c, p) for c, _, p in _LANGS], n)
    groups = np.array([{c: g for c, g, _ in _LANGS}[c] for c in lang_codes], dtype=object)
    has_term = rng.random(n) < term_rate
    toxic = rng.random(n) < toxic_rate
    toxic_words = [w for w in read_list(PROMPTS_DIR / "toxic_words.txt") if " " not in w]
    captions = []
    for i in range(n):
        words = [
            "a photo of a",
            _ADJ[rng.integers(len(_ADJ))],
            _NOUN[rng.integers(len(_NOUN))],
            _PLACE[rng.integers(len(_PLACE))],
        ]
        if has_term[i]:
            words.insert(3, f"near a {term}")
        if toxic[i]:
            words.append(toxic_words[rng.integers(len(toxic_words))])
        captions.append(" ".join(words))
    # zipf-like domains: a few sites hold most images
    domain_ids = np.minimum(rng.zipf(1.6, n), 40)
    urls = [f"https://www.site{d}.example/img/{i}.jpg" for i, d in zip(range(n), domain_ids, strict=True)]
    width = rng.choice(_SIDES, n)
    height = rng.choice(_SIDES, n)
    candidates = pd.DataFrame(
        {
            "sample_id": ids,
            "url": urls,
            "text": captions,
            "page_url": [f"https://site{d}.example/page/{i // 3}.html" for i, d in enumerate(domain_ids)],
            "language": lang_codes,
            "language_score": rng.uniform(0.3, 1.0, n).astype("float32"),
            "language_group": groups,
            "license": _choice(rng, _LICENSES, n),
            "crawl_id": "CC-MAIN-GENERATED",
            "original_width": width.astype("int32"),
            "original_height": height.astype("int32"),
            "source_format": "wat",
        }
    )
    status = _choice(rng, _STATUS, n)
    ok = status == "success"
    sha = np.array([hashlib.sha256(s.encode()).hexdigest() for s in ids], dtype=object)
    dup = rng.random(n) < 0.03  # the same image at another URL
    sha[1:][dup[1:]] = sha[:-1][dup[1:]]
    images_df = pd.DataFrame(
        {
            "sample_id": ids,
            "url": urls,
            "status": status,
            "http_status": np.where(ok, 200, 404).astype("int32"),
            "width": np.where(ok, np.minimum(width, 256), 0).astype("int32"),
            "height": np.where(ok, np.minimum(height, 256), 0).astype("int32"),
            "original_width": width.astype("int32"),
            "original_height": height.astype("int32"),
            "sha256": np.where(ok, sha, None),
            "format": np.where(ok, "png", None),
        }
    )
    if images:
        images_df["image"] = [
            _png((int(i * 37) % 256, int(i * 91) % 256, 128)) if k else None
            for i, k in enumerate(ok)
        ]
    emb_ids = np.flatnonzero(ok)
    sim = np.clip(rng.normal(0.30, 0.05, len(emb_ids)), -1, 1).astype("float32")
    embeddings = pd.DataFrame(
        {"sample_id": [ids[i] for i in emb_ids], "model_id": MODEL_ID, "similarity": sim,
         "status": "success"}
    )
    # tags: the term's samples at term_nsfw_rate, the rest at the base rates
    u = rng.random(len(emb_ids))
    term_rows = has_term[emb_ids]
    tag = np.where(u < nsfw_rate, "NSFW", np.where(u < nsfw_rate + unsure_rate, "UNSURE", "UNLIKELY"))
    tag = np.where(term_rows, np.where(rng.random(len(emb_ids)) < term_nsfw_rate, "NSFW", "UNLIKELY"), tag)
    tag = tag.astype(object)
    punsafe = np.where(
        tag == "NSFW",
        rng.uniform(0.7, 1.0, len(tag)),
        np.where(tag == "UNSURE", rng.uniform(0.4, 0.8, len(tag)), rng.uniform(0.0, 0.3, len(tag))),
    ).astype("float32")
    punsafe_known = rng.random(len(tag)) >= 0.05
    scorer = WordListToxicity(read_list(PROMPTS_DIR / "toxic_words.txt"))
    tox = scorer.score([captions[i] for i in emb_ids])
    flags = []
    for t, p, x in zip(tag, punsafe, tox, strict=True):
        f = []
        if t in ("NSFW", "UNSURE") and rng.random() < 0.2:
            f.append("drop")
        if p > 0.5:
            f.append("nsfw")
        if x > 0.5:
            f.append("toxic")
        flags.append(f)
    refs = {
        "nsfw": "generated-nsfw@000000000000",
        "watermark": "generated-watermark@000000000000",
        "aesthetic": "generated-aesthetic@000000000000",
        "toxicity": scorer.model_ref,
        "zero_shot": f"zero-shot:{MODEL_ID}:prompts@000000000000",
    }
    scores = pd.DataFrame(
        {
            "sample_id": [ids[i] for i in emb_ids],
            "model_id": MODEL_ID,
            "punsafe": pd.Series(punsafe, dtype="float32").astype(object).where(punsafe_known, None),
            "pwatermark": rng.uniform(0, 1, len(tag)).astype("float32"),
            "toxicity": tox.astype("float32"),
            "aesthetic": np.clip(rng.normal(5.0, 1.2, len(tag)), 0, 10).astype("float32"),
            "nsfw_tag": tag,
            "flags": flags,
            "score_models": [refs] * len(tag),
        }
    )
    thr = np.array([THRESHOLDS.get(groups[i], THRESHOLDS["*"]) for i in emb_ids])
    clip_keep = sim >= thr
    safe_keep = clip_keep & (tag == "UNLIKELY")
    subsets = pd.concat(
        [
            pd.DataFrame({"subset": name, "sample_id": [ids[i] for i in emb_ids[mask]], "repeat": 1})
            for name, mask in (("clip_filter", clip_keep), ("safety", safe_keep))
        ],
        ignore_index=True,
    )
    subsets["repeat"] = subsets["repeat"].astype("int32")
    extract_stats = pd.DataFrame(
        {
            "source_file": ["generated-00000.warc.wat.gz"],
            "records": [n // 2],
            "pages": [n // 3],
            "pairs": [n],
            "bad_records": [1],
            "rejected": [{"caption_too_short": n // 5, "bad_extension": n // 10}],
            "errors": [{}],
            "seconds": [1.0],
            "finished_at": [now],
            "status": ["partial"],
            "crawl_id": ["CC-MAIN-GENERATED"],
        }
    )
    frames = {
        "candidates": candidates,
        "extract_stats": extract_stats,
        "images": images_df,
        "embeddings": embeddings,
        "scores": scores,
        "subsets": subsets,
    }
    planted = Planted(n, seed, nsfw_rate, unsure_rate, toxic_rate, term, term_rate, term_nsfw_rate)
    return frames, planted


def spark_frame(spark, name: str, pdf: pd.DataFrame):
    """A pandas frame of table `name` as a Spark frame with the declared column types."""
    schema = spark_schema(name, list(pdf.columns))
    return spark.createDataFrame(pdf.astype(object).where(pdf.notna(), None), schema)


def write_generated_pool(spark, cfg: Config, tables: Tables, **kwargs) -> Planted:
    """Write `generated_frames(**kwargs)` through `Tables.upsert`, plus a takedown request and
    the `runs` rows a report reads (curate's applied thresholds, score's config)."""
    from laion_spark.stage import StageResult, record_run

    frames, planted = generated_frames(**kwargs)
    for name, pdf in frames.items():
        tables.upsert(spark_frame(spark, name, pdf), name, update=False, dedup=False)
    takedown = pd.DataFrame(
        {
            "request_id": ["generated-request-1"],
            "kind": ["domain"],
            "value": ["removed.example"],
            "reason": ["generated"],
            "removed": [{"candidates": 2, "images": 2}],
            "requested_at": [datetime(2026, 1, 1, tzinfo=UTC)],
        }
    )
    tables.upsert(spark_frame(spark, "takedowns", takedown), "takedowns")
    started = datetime(2026, 1, 1, tzinfo=UTC)
    notes = {f"clip_filter_threshold_{k}": v for k, v in THRESHOLDS.items()}
    record_run(tables, cfg, StageResult("score", planted.n, planted.n, {}, 1.0, {}), {}, started)
    record_run(tables, cfg, StageResult("curate", planted.n, planted.n, {}, 1.0, notes), {}, started)
    return planted
