"""`laion-spark takedown`: remove samples by url, domain, sha256, md5, pdq or sample_id.

    removed = takedown(spark, cfg, tables, "url", ["https://x.org/a.jpg"], reason="DMCA 123")
    # {"candidates": 1, "images": 1, "embeddings": 1, "scores": 1, ...}

1. Each value is recorded in `takedowns` first (request_id = hash of kind + normalised
   value, so repeating a request is idempotent). Recording first means an interrupted
   takedown still blocks the sample: extract and download call
   laion_spark.takedown.rules.exclude_taken_down / taken_down_hashes on everything they write,
   and a running search service re-reads this table within seconds.
2. Resolution, before anything is deleted: the values resolve to sample_ids (url/domain
   through the `url` of candidates and images, sha256/md5 through images, pdq by Hamming
   distance to the images' PDQ hashes, sample_id as given), and every matched sample to what
   was derived from it: faiss ids and shards per index (`index_ids`), image sha256 and PDQ
   hash, the sha256 of its URLs. The resolution is stored on the request's row, so merge
   removes the faiss ids even though `index_ids` rows are gone, search hides the samples at
   once, and purge knows which shards and exports to rewrite.
3. Every table with a sample_id column that holds them loses those rows (Delta DELETE);
   the rows removed per table (counted in one job before the deletes, and recorded with
   the resolution) are added to the request's `removed` map.

Delta keeps deleted rows in older table versions until VACUUM: `purge` (purge.py, or
`takedown --purge`) erases them physically.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import Config
from laion_spark.ids import normalize_url
from laion_spark.tables import SPECS, Tables
from laion_spark.takedown.pdq import normalize_hash
from laion_spark.takedown.rules import KINDS, domain_matches, host_of, url_hash

log = logging.getLogger(__name__)
SAMPLE_TABLES = tuple(n for n, s in SPECS.items() if "sample_id" in s.schema.fieldNames())
_MAP_COLUMNS = {
    f.name for f in SPECS["takedowns"].schema.fields if isinstance(f.dataType, T.MapType)
}
RESOLUTION = ("sample_ids", "faiss_ids", "shards", "sha256", "pdq", "url_hashes")


def normalize_value(kind: str, value: str) -> str:
    v = (value or "").strip()
    if kind == "url":
        return normalize_url(v)
    if kind == "domain":
        return v.lower().lstrip(".").rstrip(".")
    if kind in ("sha256", "md5"):
        return v.lower()
    if kind == "pdq":
        return normalize_hash(v)
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


def _pdq_matches(tables: Tables, values: list[str], max_distance: int, min_quality: int):
    """(sample_id, value) of images whose PDQ hash is within max_distance of a listed one.

    Stored hashes are used; images written before the pdq column existed are hashed from
    their bytes on the fly. Hashes under min_quality are skipped (PDQ's guidance).
    """
    import pandas as pd

    img = tables.read("images")
    pdq_col = F.col("pdq") if "pdq" in img.columns else F.lit(None).cast("string")
    img = img.where(F.col("image").isNotNull() | pdq_col.isNotNull())
    qual_col = F.col("pdq_quality") if "pdq_quality" in img.columns else F.lit(None).cast("int")
    src = img.select(
        "sample_id",
        pdq_col.alias("pdq"),
        qual_col.alias("pdq_quality"),
        F.when(pdq_col.isNull(), F.col("image")).alias("image"),
    )
    bc = tables.spark.sparkContext.broadcast(sorted(values))

    def match(batches):
        from laion_spark.takedown.pdq import Matcher, hash_image

        matcher = Matcher(bc.value, max_distance)
        for pdf in batches:
            hashes, quality = list(pdf["pdq"]), list(pdf["pdq_quality"])
            for i, h in enumerate(hashes):
                if h is None or h != h:  # null: hash the stored bytes now
                    got = hash_image(pdf["image"].iloc[i])
                    hashes[i], quality[i] = got if got else (None, None)
            keep = [
                h if h and (q is None or q != q or int(q) >= min_quality) else None
                for h, q in zip(hashes, quality, strict=True)
            ]
            rows = [(pdf["sample_id"].iloc[p], listed) for p, listed, _ in matcher.match(keep)]
            yield pd.DataFrame(rows, columns=["sample_id", "value"])

    return src.mapInPandas(match, "sample_id string, value string")


def resolve(
    tables: Tables, kind: str, values: list[str], max_distance: int = 31, min_quality: int = 50
) -> DataFrame:
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
    elif kind == "pdq" and tables.exists("images"):
        parts.append(_pdq_matches(tables, values, max_distance, min_quality))
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


def derived(tables: Tables, sample_ids: set[str]) -> dict[str, dict]:
    """sample_id -> what was derived from it: faiss ids and shards per index, image sha256
    and PDQ hash, sha256 of each URL. Collected to the driver (takedowns are small)."""
    out: dict[str, dict] = {
        s: {"faiss": [], "sha256": set(), "pdq": set(), "url_hashes": set()} for s in sample_ids
    }
    if not sample_ids:
        return out
    ids = F.broadcast(
        tables.spark.createDataFrame([(s,) for s in sorted(sample_ids)], "sample_id string")
    )
    if tables.exists("index_ids"):
        for r in tables.read("index_ids").join(ids, "sample_id").collect():
            out[r["sample_id"]]["faiss"].append((r["index_name"], r["faiss_id"], r["shard"]))
    if tables.exists("images"):
        img = tables.read("images")
        cols = [
            F.coalesce(F.col("sha256"), F.sha2(F.col("image"), 256)).alias("sha256"),
            (F.col("pdq") if "pdq" in img.columns else F.lit(None).cast("string")).alias("pdq"),
            "url",
        ]
        for r in img.join(ids, "sample_id").select("sample_id", *cols).collect():
            d = out[r["sample_id"]]
            if r["sha256"]:
                d["sha256"].add(r["sha256"].lower())
            if r["pdq"]:
                d["pdq"].add(r["pdq"])
            if r["url"]:
                d["url_hashes"].add(url_hash(r["url"]))
    if tables.exists("candidates"):
        for r in (
            tables.read("candidates").join(ids, "sample_id").select("sample_id", "url").collect()
        ):
            if r["url"]:
                out[r["sample_id"]]["url_hashes"].add(url_hash(r["url"]))
    return out


def resolution_of(sids: set[str], info: dict[str, dict]) -> dict:
    """The resolution columns of one request from its matched samples."""
    faiss: dict[str, set[int]] = {}
    shards: dict[str, set[str]] = {}
    res = {"sha256": set(), "pdq": set(), "url_hashes": set()}
    for s in sids:
        d = info.get(s) or {}
        for index_name, fid, shard in d.get("faiss", ()):
            faiss.setdefault(index_name, set()).add(int(fid))
            if shard:
                shards.setdefault(index_name, set()).add(shard)
        for key in res:
            res[key] |= d.get(key, set())
    return {
        "sample_ids": sorted(sids),
        "faiss_ids": {k: sorted(v) for k, v in faiss.items()},
        "shards": {k: sorted(v) for k, v in shards.items()},
        **{k: sorted(v) for k, v in res.items()},
    }


def _merge_resolution(prev, new: dict | None) -> dict:
    """Union of a stored resolution (a Row or None) and a new one: a repeated request keeps
    what earlier runs resolved (those samples are deleted by now and resolve to nothing)."""
    out: dict = {}
    for key in RESOLUTION:
        old = prev[key] if prev is not None and key in prev.asDict() else None
        add = (new or {}).get(key)
        if key in ("faiss_ids", "shards"):
            merged: dict[str, set] = {k: set(v or ()) for k, v in (old or {}).items()}
            for k, v in (add or {}).items():
                merged.setdefault(k, set()).update(v)
            out[key] = {k: sorted(v) for k, v in merged.items()} if merged else None
        else:
            merged_list = sorted(set(old or ()) | set(add or ()))
            out[key] = merged_list if merged_list or old is not None else None
    return out


def _record(
    tables: Tables,
    kind: str,
    values: list[str],
    reason: str,
    removed: dict[str, dict[str, int]],
    resolutions: dict[str, dict] | None = None,
    max_distance: int | None = None,
) -> None:
    """Upsert one row per value; `removed` counts add to what earlier runs removed, a new
    resolution is united with the stored one."""
    spark = tables.spark
    ids = {request_id(kind, v): v for v in values}
    old = {}
    # local path table: read and written by delta-rs in this process (a takedown records
    # twice, and each Spark read + MERGE costs seconds); else, or when delta-rs cannot
    # read or write it, through Spark
    stored = None
    if tables.exists("takedowns"):
        stored = _rows_local(tables, "takedowns", "request_id", list(ids))
        if stored is not None:
            old = {r["request_id"]: _as_row(r) for r in stored}
        else:
            rows = tables.read("takedowns").where(F.col("request_id").isin(list(ids))).collect()
            old = {r["request_id"]: r for r in rows}
    elif tables.local("takedowns"):
        stored = []
    out = []
    for rid, v in ids.items():
        prev = old.get(rid)
        counts = dict(prev["removed"] or {}) if prev is not None else {}
        for t, n in removed.get(v, {}).items():
            counts[t] = int(counts.get(t, 0)) + int(n)
        res = _merge_resolution(prev, (resolutions or {}).get(v))
        fields = prev.asDict() if prev is not None else {}
        out.append(
            {
                "request_id": rid,
                "kind": kind,
                "value": fields.get("value") or v,
                "reason": reason or fields.get("reason") or "",
                "removed": counts,
                "requested_at": fields.get("requested_at"),
                **res,
                "max_distance": max_distance if kind == "pdq" else None,
                "resolved_at": None,
                "purge_id": fields.get("purge_id"),
                "purged_at": fields.get("purged_at"),
            }
        )
    if stored is not None:
        now = datetime.now(UTC)
        for row in out:
            prev = old.get(row["request_id"])
            row["requested_at"] = row["requested_at"] or now
            # not re-resolved: the stored resolution time stays, as Spark's MERGE leaves it
            row["resolved_at"] = now if resolutions is not None else _get(prev, "resolved_at")
        if tables.upsert_rows_local(out, "takedowns"):
            return
        for row in out:  # delta-rs could not write them: Spark's MERGE fills these
            row["requested_at"] = _get(old.get(row["request_id"]), "requested_at")
    df = spark.createDataFrame(out, SPECS["takedowns"].schema)
    df = df.withColumn("requested_at", F.coalesce("requested_at", F.current_timestamp()))
    if resolutions is not None:
        df = df.withColumn("resolved_at", F.current_timestamp())
    else:
        df = df.drop("resolved_at")
    tables.upsert(df, "takedowns")


def _rows_local(
    tables: Tables, name: str, column: str, values: list[str], columns: list[str] | None = None
) -> list[dict] | None:
    """`columns` (default: all) of the rows of table `name` whose string `column` is one of `values`,
    read in this process by delta-rs (a Spark job costs seconds, a takedown runs a dozen);
    None when `name` is not a local path table or delta-rs cannot read it (use Spark)."""
    from laion_spark.lake import read_rows

    if not tables.local(name):
        return None
    read = None if columns is None else list(dict.fromkeys([column, *columns]))
    try:
        hits = read_rows(tables.location(name), read, isin=(column, values))
    except Exception:  # noqa: BLE001 - e.g. deletion vectors, which pyarrow cannot apply
        return None
    return (hits if columns is None else hits.select(columns)).to_pylist()


def _as_row(d: dict) -> Row:
    """A row read by delta-rs as Spark would collect it: maps as dicts, not pair lists."""
    return Row(
        **{k: dict(v) if isinstance(v, list) and k in _MAP_COLUMNS else v for k, v in d.items()}
    )


def _get(row: Row | None, key: str):
    return row[key] if row is not None and key in row.asDict() else None


def _held_local(tables: Tables, name: str, ids: list[str]) -> dict[str, int] | None:
    """sample_id -> rows of `ids` in table `name` by delta-rs (None: Spark counts it)."""
    rows = _rows_local(tables, name, "sample_id", ids, ["sample_id"])
    if rows is None:
        return None
    out: dict[str, int] = {}
    for r in rows:
        out[r["sample_id"]] = out.get(r["sample_id"], 0) + 1
    return out


def present(tables: Tables, sample_ids: set[str]) -> dict[str, dict[str, int]]:
    """table -> {sample_id: rows} of the given samples in every table with a sample_id:
    local path tables read by delta-rs in this process (a takedown checks a dozen tables,
    and a Spark job costs seconds), the others in ONE Spark job (a union of small
    filtered reads). Only tables with hits are written."""
    if not sample_ids:
        return {}
    ids = sorted(sample_ids)
    out: dict[str, dict[str, int]] = {}
    parts = []
    for name in SAMPLE_TABLES:
        if not tables.exists(name):
            continue
        held = _held_local(tables, name, ids)
        if held is None:
            parts.append(
                tables.read(name)
                .where(F.col("sample_id").isin(ids))
                .groupBy("sample_id")
                .count()
                .withColumn("table", F.lit(name))
            )
        elif held:
            out[name] = held
    if parts:
        union = parts[0]
        for p in parts[1:]:
            union = union.unionByName(p)
        for r in union.collect():
            out.setdefault(r["table"], {})[r["sample_id"]] = int(r["count"])
    return out


def _delete(tables: Tables, name: str, column: str, values: set[str]) -> None:
    """Delete the rows whose `column` is one of `values`: one delta-rs MERGE in this
    process for local path tables (a Spark MERGE costs seconds of jobs, and a takedown
    deletes from up to a dozen tables), else (or when delta-rs cannot write the table) a
    Spark Delta DELETE (MERGE ... WHEN MATCHED DELETE)."""
    if tables.local(name):
        try:
            tables.delete_local(name, column, values)
            return
        except Exception as e:  # noqa: BLE001 - a table feature delta-rs cannot write
            log.info("delta-rs delete from %s failed (%s); using Spark's", name, e)
    keys = tables.spark.createDataFrame([(v,) for v in sorted(values)], f"`{column}` string")
    tables.delete(name, keys)


# tables derived from an sft_pool row (its image's responses and pairs), keyed by pool_id
POOL_DERIVED = ("dpo_candidates", "dpo_pairs")


def _delete_dpo_derived(tables: Tables, sample_ids: set[str]) -> None:
    """Responses and preference pairs generated from taken-down samples' images go with
    them: they hold no sample_id, only the pool_id of the sft_pool row."""
    if not sample_ids or not tables.exists("sft_pool"):
        return
    rows = _rows_local(tables, "sft_pool", "sample_id", sorted(sample_ids), ["pool_id"])
    if rows is None:
        rows = (
            tables.read("sft_pool")
            .where(F.col("sample_id").isin(sorted(sample_ids)))
            .select("pool_id")
            .collect()
        )
    pools = {r["pool_id"] for r in rows if r["pool_id"] is not None}
    for name in POOL_DERIVED:
        if pools and tables.exists(name):
            _delete(tables, name, "pool_id", pools)


def delete_samples(tables: Tables, sample_ids: set[str]) -> dict[str, dict[str, int]]:
    """Delete the samples from every table holding them; what each table held."""
    found = present(tables, sample_ids)
    _delete_dpo_derived(tables, set(found.get("sft_pool", {})))
    for name, rows in found.items():
        _delete(tables, name, "sample_id", set(rows))
    return found


def takedown(
    spark: SparkSession,
    cfg: Config,
    tables: Tables,
    kind: str,
    values: list[str],
    reason: str = "",
    max_distance: int | None = None,
    purge: bool = False,
) -> dict[str, int]:
    """Record the request, resolve it, delete the matching samples from every table; rows
    removed per table. `purge=True` then erases them physically (purge.purge)."""
    if kind not in KINDS:
        raise ValueError(f"takedown kind must be one of {', '.join(KINDS)}, not {kind!r}")
    vals = sorted({normalize_value(kind, v) for v in values if v and v.strip()})
    if not vals:
        raise ValueError("takedown needs at least one non-empty value")
    dist = cfg.takedown.pdq_max_distance if max_distance is None else int(max_distance)
    if not 0 <= dist <= 128:
        raise ValueError(f"max_distance must be in 0..128, not {dist}")
    _record(tables, kind, vals, reason, {}, max_distance=dist)  # blocks even if interrupted
    # resolve once, before deleting (the resolution reads tables we delete from)
    hits: dict[str, set[str]] = {v: {v} for v in vals} if kind == "sample_id" else {}
    if kind != "sample_id":
        found = resolve(tables, kind, vals, dist, cfg.takedown.pdq_min_quality).collect()
        for r in found:
            hits.setdefault(r["value"], set()).add(r["sample_id"])
    matched = set().union(*hits.values()) if hits else set()
    held = present(tables, matched)
    totals: dict[str, int] = {name: sum(held.get(name, {}).values()) for name in SAMPLE_TABLES}
    per_value = {
        v: {name: n for name in held if (n := sum(held[name].get(s, 0) for s in sids))}
        for v, sids in hits.items()
    }
    if any(per_value.values()):
        # the resolution and the rows about to go, kept before deletion, so every later
        # step can honour it even if the deletion is interrupted
        info = derived(tables, matched)
        resolutions = {v: resolution_of(hits.get(v, set()), info) for v in vals}
        _record(tables, kind, vals, reason, per_value, resolutions, max_distance=dist)
        _delete_dpo_derived(tables, set(held.get("sft_pool", {})))
        for name, rows in held.items():
            _delete(tables, name, "sample_id", set(rows))
    log.info(
        "takedown %s: %d value(s), %d sample(s) matched",
        kind,
        len(vals),
        len(set().union(*hits.values())) if hits else 0,
    )
    if purge:
        from laion_spark.takedown.purge import purge as run_purge

        run_purge(spark, cfg, tables, [request_id(kind, v) for v in vals])
    return totals
