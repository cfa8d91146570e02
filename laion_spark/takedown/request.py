"""`laion-spark takedown`: remove samples by url, domain, sha256, md5 or sample_id.

    removed = takedown(spark, cfg, tables, "url", ["https://x.org/a.jpg"], reason="DMCA 123")
    # {"candidates": 1, "images": 1, "embeddings": 1, "scores": 1, ...}

1. Each value is recorded in `takedowns` first (request_id = hash of kind + normalised
   value, so repeating a request is idempotent). Recording first means an interrupted
   takedown still blocks the sample: extract and download call
   laion_spark.takedown.rules.exclude_taken_down / taken_down_hashes on everything they write,
   and the index helper filters search results by this table.
2. The values resolve to sample_ids: url/domain through the `url` of candidates and
   images, sha256/md5 through images (md5 computed from the stored bytes; sha256 too where
   the column is empty), sample_id as given.
3. Every table with a sample_id column loses those rows (Delta DELETE); the
   counts removed per table are added to the request's `removed` map.

Delta keeps deleted rows in older table versions until VACUUM; for erasure run
`VACUUM <table> RETAIN n HOURS` after the retention period (docs/score.md).
"""

from __future__ import annotations

import hashlib

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import Config
from laion_spark.ids import normalize_url
from laion_spark.tables import SPECS, Tables
from laion_spark.takedown.rules import KINDS, domain_matches, host_of

SAMPLE_TABLES = tuple(n for n, s in SPECS.items() if "sample_id" in s.schema.fieldNames())


def normalize_value(kind: str, value: str) -> str:
    v = (value or "").strip()
    if kind == "url":
        return normalize_url(v)
    if kind == "domain":
        return v.lower().lstrip(".").rstrip(".")
    if kind in ("sha256", "md5"):
        return v.lower()
    return v


def request_id(kind: str, value: str) -> str:
    """Deterministic id of a request: the same kind + value is the same request."""
    return hashlib.sha256(f"{kind}\t{normalize_value(kind, value)}".encode()).hexdigest()[:32]


def _url_matches(kind: str, values: list[str]):
    """UDF: url -> the listed value it matches (or null)."""
    vals = set(values)

    @F.udf("string")
    def match(url):
        if not url:
            return None
        if kind == "url":
            n = normalize_url(url)
            return n if n in vals else None
        host = host_of(url)
        if not domain_matches(host, vals):
            return None
        parts = host.split(".")
        return next(".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:]) in vals)

    return match


def resolve(tables: Tables, kind: str, values: list[str]) -> DataFrame:
    """(sample_id, value) of every stored sample a request matches."""
    spark = tables.spark
    schema = T.StructType(
        [T.StructField("sample_id", T.StringType()), T.StructField("value", T.StringType())]
    )
    parts: list[DataFrame] = []
    if kind == "sample_id":
        return spark.createDataFrame([(v, v) for v in values], schema)
    if kind in ("url", "domain"):
        m = _url_matches(kind, values)
        for name in ("candidates", "images"):
            if tables.exists(name):
                df = tables.read(name).select("sample_id", m(F.col("url")).alias("value"))
                parts.append(df.where(F.col("value").isNotNull()))
    elif kind in ("sha256", "md5") and tables.exists("images"):
        img = tables.read("images")
        if kind == "sha256":
            h = F.lower(F.coalesce(F.col("sha256"), F.sha2(F.col("image"), 256)))
        elif "md5" in img.columns:
            h = F.lower(F.coalesce(F.col("md5"), F.md5(F.col("image"))))
        else:
            h = F.md5(F.col("image"))  # no md5 column: hash the stored bytes
        vals = spark.createDataFrame([(v,) for v in values], "value string")
        parts.append(
            img.select("sample_id", h.alias("value"))
            .join(F.broadcast(vals), "value")
            .select("sample_id", "value")
        )
    if not parts:
        return spark.createDataFrame([], schema)
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.where(F.col("sample_id").isNotNull()).distinct()


def _record(
    tables: Tables, kind: str, values: list[str], reason: str, removed: dict[str, dict[str, int]]
) -> None:
    """Upsert one row per value; `removed` counts add to what earlier runs removed."""
    spark = tables.spark
    ids = {request_id(kind, v): v for v in values}
    old = {}
    if tables.exists("takedowns"):
        rows = tables.read("takedowns").where(F.col("request_id").isin(list(ids))).collect()
        old = {r["request_id"]: r for r in rows}
    out = []
    for rid, v in ids.items():
        prev = old.get(rid)
        counts = dict(prev["removed"] or {}) if prev is not None else {}
        for t, n in removed.get(v, {}).items():
            counts[t] = int(counts.get(t, 0)) + int(n)
        out.append(
            {
                "request_id": rid,
                "kind": kind,
                "value": v,
                "reason": reason or (prev["reason"] if prev is not None else ""),
                "removed": counts,
                "requested_at": prev["requested_at"] if prev is not None else None,
            }
        )
    df = spark.createDataFrame(out, SPECS["takedowns"].schema)
    df = df.withColumn("requested_at", F.coalesce("requested_at", F.current_timestamp()))
    tables.upsert(df, "takedowns")


def _delete(tables: Tables, name: str, hits: dict[str, set[str]]) -> dict[str, int]:
    """Delete the rows of `name` whose sample_id was hit; rows removed per value.

    One small read finds which ids the table holds (no write when none), then one Delta
    DELETE; takedown lists are small, so the ids travel as a literal IN list.
    """
    if not tables.exists(name):
        return {}
    ids = sorted(set().union(*hits.values()))
    present: dict[str, int] = {}
    for r in (
        tables.read(name).where(F.col("sample_id").isin(ids)).groupBy("sample_id").count().collect()
    ):
        present[r["sample_id"]] = int(r["count"])
    if not present:
        return {}
    ids_df = tables.spark.createDataFrame([(s,) for s in sorted(present)], "sample_id string")
    tables.delete(name, ids_df)
    return {
        v: sum(present.get(s, 0) for s in sids) for v, sids in hits.items() if sids & present.keys()
    }


def takedown(
    spark: SparkSession,
    cfg: Config,
    tables: Tables,
    kind: str,
    values: list[str],
    reason: str = "",
) -> dict[str, int]:
    """Record the request, delete the matching samples from every table; rows removed per table."""
    if kind not in KINDS:
        raise ValueError(f"takedown kind must be one of {', '.join(KINDS)}, not {kind!r}")
    vals = sorted({normalize_value(kind, v) for v in values if v and v.strip()})
    if not vals:
        raise ValueError("takedown needs at least one non-empty value")
    _record(tables, kind, vals, reason, {})  # blocks re-entry even if deletion is interrupted
    # resolve once, before deleting (the resolution reads tables we delete from)
    hits: dict[str, set[str]] = {v: {v} for v in vals} if kind == "sample_id" else {}
    if kind != "sample_id":
        for r in resolve(tables, kind, vals).collect():
            hits.setdefault(r["value"], set()).add(r["sample_id"])
    totals: dict[str, int] = {name: 0 for name in SAMPLE_TABLES}
    per_value: dict[str, dict[str, int]] = {}
    if hits:
        for name in SAMPLE_TABLES:
            counts = _delete(tables, name, hits)
            totals[name] = sum(counts.values())
            for v, n in counts.items():
                per_value.setdefault(v, {})[name] = n
    if per_value:
        _record(tables, kind, vals, reason, per_value)
    return totals
