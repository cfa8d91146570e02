"""Build `candidates` from existing metadata parquet (LAION or DataComp column layouts)."""

from __future__ import annotations

import time
from typing import Literal

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from laion_spark.config import Config
from laion_spark.stage import StageResult
from laion_spark.tables import Tables
from laion_spark.takedown.rules import exclude_taken_down

# candidates column -> names it has in each layout (first present wins, case-insensitive)
LAYOUTS: dict[str, dict[str, list[str]]] = {
    "laion": {
        "url": ["URL", "url"],
        "text": ["TEXT", "caption", "text"],
        "original_id": ["SAMPLE_ID", "key", "hash"],
        "original_width": ["WIDTH", "original_width"],
        "original_height": ["HEIGHT", "original_height"],
        "language": ["LANGUAGE", "language"],
        "license": ["LICENSE", "license"],
    },
    "datacomp": {
        "url": ["url"],
        "text": ["text"],
        "original_id": ["uid"],
        "original_width": ["original_width"],
        "original_height": ["original_height"],
        "language": [],
        "license": [],
    },
}


def _find(df: DataFrame, names: list[str]) -> str | None:
    lower = {c.lower(): c for c in df.columns}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _ids(urls: pd.Series, texts: pd.Series) -> pd.Series:
    from laion_spark.ids import sample_id

    return pd.Series([sample_id(u, t) for u, t in zip(urls, texts, strict=True)])


def _lang(texts: pd.Series) -> pd.DataFrame:
    from laion_spark.extract import language

    out = [language.detect(t or "") for t in texts]
    return pd.DataFrame({"code": [c for c, _ in out], "score": [float(s) for _, s in out]})


def import_metadata(
    spark: SparkSession,
    cfg: Config,
    tables: Tables,
    path: str,
    flavor: Literal["laion", "datacomp"] = "laion",
) -> StageResult:
    """MERGE LAION/DataComp metadata parquet into `candidates`, keeping original ids.

    Columns not mapped to a candidates column (similarity, punsafe, pwatermark, clip scores,
    sha256, ...) are kept as strings in `original_meta`. Rows without URL or caption are
    counted (`missing_url_or_text`) and not imported. Language: the file's LANGUAGE column
    if any, else the bundled fastText model when extract.language_id is on.
    """
    t0 = time.time()
    if flavor not in LAYOUTS:
        raise ValueError(f"flavor must be one of {sorted(LAYOUTS)}, not {flavor!r}")
    ex = cfg.extract
    df = spark.read.parquet(path)
    layout = LAYOUTS[flavor]
    cols = {k: _find(df, v) for k, v in layout.items()}
    if not cols["url"] or not cols["text"]:
        raise ValueError(f"{path}: no URL/TEXT columns for flavor {flavor!r}; has {df.columns}")
    used = {c for c in cols.values() if c}
    extra = [c for c in df.columns if c not in used]

    def col(name: str, typ: str) -> F.Column:
        c = cols.get(name)
        return F.col(f"`{c}`").cast(typ) if c else F.lit(None).cast(typ)

    meta = (
        F.create_map(*[x for c in extra for x in (F.lit(c), F.col(f"`{c}`").cast("string"))])
        if extra
        else F.lit(None).cast("map<string,string>")
    )
    base = df.select(
        F.trim(col("url", "string")).alias("url"),
        col("text", "string").alias("text"),
        col("original_id", "string").alias("original_id"),
        col("original_width", "int").alias("original_width"),
        col("original_height", "int").alias("original_height"),
        col("language", "string").alias("language"),
        col("license", "string").alias("license"),
        meta.alias("original_meta"),
    )
    rows_in = base.count()
    good = base.where("url IS NOT NULL AND url <> '' AND text IS NOT NULL")
    ids = F.pandas_udf(_ids, "string")
    good = good.withColumn("sample_id", ids("url", "text"))
    eng = list(ex.english_codes)
    if cols["language"]:
        lang = F.lower(F.trim(F.col("language")))
        good = good.withColumn("language", F.when(lang == "", None).otherwise(lang))
        good = good.withColumn("language_score", F.lit(None).cast("float"))
        group = (
            F.when(F.col("language").isNull(), "nolang")
            .when(F.col("language").isin(eng), "en")
            .otherwise("multi")
        )
    elif ex.language_id:
        detect = F.pandas_udf(_lang, "code string, score double")
        good = good.withColumn("_l", detect("text"))
        good = (
            good.withColumn("language", F.col("_l.code"))
            .withColumn("language_score", F.col("_l.score").cast("float"))
            .drop("_l")
        )
        group = (
            F.when(
                F.col("language").isNull() | (F.col("language_score") < ex.min_language_score),
                "nolang",
            )
            .when(F.col("language").isin(eng), "en")
            .otherwise("multi")
        )
    else:
        good = good.withColumn("language_score", F.lit(None).cast("float"))
        group = F.lit("nolang")
    good = (
        good.withColumn("language_group", group)
        .withColumn("source_file", F.lit(path))
        .withColumn("source_format", F.lit(flavor))
        .withColumn("crawl_id", F.lit(ex.crawl_id).cast("string"))
        .withColumn("extracted_at", F.current_timestamp())
    )
    kept = exclude_taken_down(tables, good)
    before = tables.read("candidates").count() if tables.exists("candidates") else 0
    tables.upsert(kept, "candidates")
    after = tables.read("candidates").count()
    n_good = good.count()
    stats = spark.createDataFrame(
        [
            (
                path,
                rows_in,
                n_good,
                rows_in - n_good,
                {"missing_url_or_text": rows_in - n_good},
                time.time() - t0,
                "ok",
            )
        ],
        "source_file string, records long, pairs long, bad_records long, "
        "rejected map<string,long>, seconds double, status string",
    ).withColumn("finished_at", F.current_timestamp())
    tables.upsert(stats, "extract_stats")
    return StageResult(
        "extract",
        rows_in=rows_in,
        rows_out=after - before,
        by_status={
            "imported": n_good,
            "missing_url_or_text": rows_in - n_good,
            "inserted": after - before,
        },
        seconds=time.time() - t0,
        notes={"flavor": flavor, "meta_columns": len(extra)},
    )
