"""Keyword probes, as the 2021 LAION-400M audit did: query terms in, counts and rates out.

For each term of the list (conf/audit/terms.txt by default; docs/report.md says how the
audit chose its terms):

- caption match: every sample of the population whose caption holds the term as a whole
  word (case-insensitive; a phrase's words may be separated by any whitespace), in Spark;
- index query: the term as a text query against the merged index (CLIP text tower, the
  same `Searcher` as `laion-spark search`, safe mode OFF so nothing is hidden from the
  count), top `report.probe_k` results, joined back to the population.

For both: how many samples, the share tagged NSFW / UNSURE, mean punsafe and the toxic
caption share, next to the population's own rates (`elevation` = term share / population
share). Only numbers leave this module, never a caption, URL or image.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import CONF_DIR, Config
from laion_spark.report.stats import rnd, share

log = logging.getLogger(__name__)
DEFAULT_TERMS = CONF_DIR / "audit" / "terms.txt"


def load_terms(path: str | None) -> list[str]:
    """Terms, one per line, `#` comments and blank lines ignored, lower-cased, unique."""
    p = Path(path).expanduser() if path else DEFAULT_TERMS
    if not p.is_file():
        raise FileNotFoundError(f"report.terms: no terms file at {p}")
    out: list[str] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        term = " ".join(line.split("#", 1)[0].split()).lower()
        if term and term not in out:
            out.append(term)
    return out


def term_pattern(term: str) -> str:
    """A Java regex matching `term` as whole words in lower-cased text."""
    words = [re.sub(r"([^a-z0-9])", r"\\\1", w) for w in term.lower().split()]
    return r"(?<![\p{L}\p{N}])" + r"\s+".join(words) + r"(?![\p{L}\p{N}])"


def _rates(df: DataFrame, by: str, toxicity_threshold: float) -> dict[str, dict[str, Any]]:
    """Per value of `by`: n, tagged, NSFW, UNSURE, mean punsafe, toxic share."""
    rows = (
        df.groupBy(by)
        .agg(
            F.count("*").alias("n"),
            F.count("nsfw_tag").alias("tagged"),
            F.sum(F.when(F.col("nsfw_tag") == "NSFW", 1).otherwise(0)).alias("nsfw"),
            F.sum(F.when(F.col("nsfw_tag") == "UNSURE", 1).otherwise(0)).alias("unsure"),
            F.count("punsafe").alias("punsafe_n"),
            F.avg("punsafe").alias("punsafe_mean"),
            F.count("toxicity").alias("toxicity_n"),
            F.sum(F.when(F.col("toxicity") > toxicity_threshold, 1).otherwise(0)).alias("toxic"),
        )
        .collect()
    )
    return {r[by]: _figures(r.asDict()) for r in rows}


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: int(r.get(k) or 0)
        for k in ("n", "tagged", "nsfw", "unsure", "punsafe_n", "toxicity_n", "toxic")
    }
    out["punsafe_mean"] = rnd(r.get("punsafe_mean"))
    out["nsfw_share"] = share(out["nsfw"], out["tagged"])
    out["unsure_share"] = share(out["unsure"], out["tagged"])
    out["nsfw_or_unsure_share"] = share(out["nsfw"] + out["unsure"], out["tagged"])
    out["toxic_share"] = share(out["toxic"], out["toxicity_n"])
    return out


def _empty() -> dict[str, Any]:
    return _figures({})


def caption_probes(
    pop: DataFrame, terms: list[str], toxicity_threshold: float
) -> dict[str, dict[str, Any]]:
    """Caption matches per term, in one pass (a sample matching two terms counts for both)."""
    if not terms:
        return {}
    text = F.lower(F.coalesce(F.col("text"), F.lit("")))
    hits = F.array(
        *[F.when(text.rlike(term_pattern(t)), F.lit(i)) for i, t in enumerate(terms)]
    )
    matched = pop.select(
        F.explode(F.filter(hits, lambda x: x.isNotNull())).alias("term_i"),
        "nsfw_tag",
        "punsafe",
        "toxicity",
    )
    by_i = _rates(matched, "term_i", toxicity_threshold)
    return {t: by_i.get(i, _empty()) for i, t in enumerate(terms)}


def index_probes(
    spark,
    cfg: Config,
    tables,
    pop: DataFrame,
    terms: list[str],
    toxicity_threshold: float,
    expected_path: str | None,
) -> dict[str, Any]:
    """Each term as a text query against the merged index; rates of the top-k results.

    `expected_path` is the merged index file of the snapshot's `index_manifest`: the probes
    run only when the index `Searcher` opens (the newest) is that one, so they describe
    the tables read. Returns {"status": "ok" | "skipped", "why", "index", "terms"}.
    """
    if not terms:
        return {"status": "skipped", "why": "no terms", "terms": {}}
    if expected_path is None:
        return {"status": "skipped", "why": "no merged index at the snapshot", "terms": {}}
    from laion_spark.index.search import Searcher

    try:
        searcher = Searcher.open(spark, cfg, tables)
    except FileNotFoundError as e:
        return {"status": "skipped", "why": str(e), "terms": {}}
    if searcher.manifest.get("path") != expected_path:
        return {
            "status": "skipped",
            "why": f"the newest merged index ({searcher.manifest.get('path')}) is not the one "
            f"of the snapshot ({expected_path}); rebuild or report without --as-of",
            "terms": {},
        }
    k = min(int(cfg.report.probe_k), int(cfg.serve.max_k))
    rows: list[tuple[int, str, int]] = []
    returned: dict[int, int] = {}
    # one batch through the text towers (each term's language routed as `laion-spark search`
    # does), then one index search per term
    from laion_spark.models.text_tower import encode_queries

    vectors = np.asarray(encode_queries(cfg, terms), dtype="float32")
    for i, _term in enumerate(terms):
        # safe mode off: the probe counts what the data holds; dedup off: every result counts
        hits = searcher.search(vectors[i], k=k, safe_mode=False, dedup=False)
        returned[i] = len(hits)
        rows += [(i, h["sample_id"], rank) for rank, h in enumerate(hits)]
    schema = T.StructType(
        [
            T.StructField("term_i", T.IntegerType()),
            T.StructField("sample_id", T.StringType()),
            T.StructField("rank", T.IntegerType()),
        ]
    )
    results = spark.createDataFrame(rows, schema)
    joined = results.join(
        pop.select("sample_id", "nsfw_tag", "punsafe", "toxicity"), "sample_id"
    )
    by_i = _rates(joined, "term_i", toxicity_threshold)
    out: dict[str, Any] = {}
    for i, term in enumerate(terms):
        figures = by_i.get(i, _empty())
        figures["returned"] = returned[i]  # results of the index (before the population join)
        out[term] = figures
    info = searcher.info()
    return {
        "status": "ok",
        "k": k,
        "index": {
            "name": info.get("index_name"),
            "path": info.get("path"),
            "count": info.get("count"),
            "factory": info.get("factory"),
            "model_id": searcher.manifest.get("model_id"),
            "created_at": str(searcher.manifest.get("created_at")),
        },
        "terms": out,
    }


def elevation(figures: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Term rates divided by the population's (None where either is unknown or zero)."""

    def ratio(a, b):
        return rnd(a / b, 4) if a is not None and b else None

    return {
        "nsfw": ratio(figures.get("nsfw_share"), base.get("nsfw_share")),
        "nsfw_or_unsure": ratio(
            figures.get("nsfw_or_unsure_share"),
            share((base.get("NSFW") or 0) + (base.get("UNSURE") or 0), base.get("tagged")),
        ),
        "toxic": ratio(figures.get("toxic_share"), base.get("toxic_share")),
    }
