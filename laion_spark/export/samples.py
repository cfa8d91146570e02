"""The samples of a subset as an export writes them: metadata, keys, repeats, skip reasons.

    subsets(subset) ⋈ candidates ⟕ images(success) ⟕ embeddings(model) ⟕ scores

read at the Delta versions the export records in its manifest (time travel), so the
manifest says exactly which data the shards hold. Two frames come out: a narrow one
(metadata, no image bytes or vectors: it is sorted and planned into shards) and the
payload (sample_id + image bytes / vectors) joined to the plan only when writing.

Keys: the sample's original key when it was imported from a WebDataset pool (so an
import -> export round trip keeps keys), else its sample_id (32 hex); a key two samples
would share falls back to the sample_id. With repeats expanded, copy i > 0 of a sample is
`KEY_0001`, `KEY_0002`, ... Keys are fixed-width per kind, so sorting them as strings sorts
the shard.

Two ways to the same rows: `keyed_rows` (Spark: a window finds shared keys, takedown
rules are column expressions) for big subsets, and `local_rows` + `resolve_local` (the
narrow rows collected, keys and takedowns resolved on the driver) for subsets up to
`export.local_plan_rows`.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from laion_spark import storage
from laion_spark.tables import Tables, spark_schema
from laion_spark.takedown.rules import TakedownRules, is_taken_down

# a pool key safe in a tar member name and a WebDataset key (no dots, no slashes)
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
# tar headers, .txt and .json of one sample: what shard_bytes adds to the image bytes
SAMPLE_OVERHEAD_BYTES = 1536


# every table an export reads; their Delta versions go in the manifest and the digest
TABLES_READ = ("subsets", "candidates", "images", "embeddings", "scores", "takedowns")


def read_at(tables: Tables, name: str, version: int | None) -> DataFrame:
    """Table `name` as of Delta `version`; an empty frame when the table does not exist."""
    spark = tables.spark
    if version is None:
        return spark.createDataFrame([], spark_schema(name))
    reader = spark.read.format("delta").option("versionAsOf", int(version))
    loc = tables.location(name)
    return reader.table(loc) if tables.database else reader.load(loc)


def _uid(original_id: Column, sample_id: Column) -> Column:
    # DataComp uid when imported with one (32 hex), else the sample_id's 128 bits
    return F.when(
        F.coalesce(original_id, F.lit("")).rlike("^[0-9a-fA-F]{32}$"), F.lower(original_id)
    ).otherwise(sample_id)


def narrow_frame(
    tables: Tables,
    subset: str,
    versions: dict[str, int | None],
    needs: frozenset[str],
    model_id: str | None,
    rules: TakedownRules | None = None,
) -> DataFrame:
    """One row per subset sample: metadata, `repeat`, `_base_key`, `size`, and `_skip` (null
    when exportable, else why not: no_candidate, no_image, no_embedding, taken_down).

    rules: the takedown rules to apply here (None: the caller applies them, on the driver).
    """
    sub = read_at(tables, "subsets", versions["subsets"])
    sub = sub.where(F.col("subset") == F.lit(subset)).select("sample_id", "repeat")
    cand = read_at(tables, "candidates", versions["candidates"]).select(
        "sample_id",
        "url",
        F.col("text").alias("caption"),
        "language",
        "license",
        "original_id",
        F.col("original_width").alias("_cand_ow"),
        F.col("original_height").alias("_cand_oh"),
        F.when(
            F.col("source_format") == F.lit("webdataset"), F.col("original_meta").getItem("key")
        ).alias("_pool_key"),
        F.lit(True).alias("_has_cand"),
    )
    imgs = (
        read_at(tables, "images", versions["images"])
        .where((F.col("status") == F.lit("success")) & F.col("image").isNotNull())
        .select(
            "sample_id",
            "width",
            "height",
            "original_width",
            "original_height",
            "sha256",
            F.col("format").alias("image_format"),
            F.col("num_bytes").alias("_num_bytes"),
            F.lit(True).alias("_has_image"),
        )
    )
    df = sub.join(cand, "sample_id", "left").join(imgs, "sample_id", "left")
    emb = read_at(tables, "embeddings", versions["embeddings"])
    emb = emb.where(
        (F.col("model_id") == F.lit(model_id))
        & F.col("image_embedding").isNotNull()
        & F.col("text_embedding").isNotNull()
    )
    emb = emb.select("sample_id", "similarity", F.lit(True).alias("_has_emb"))
    df = df.join(emb, "sample_id", "left")  # (sample_id, model_id) is the key
    if versions.get("scores") is not None:
        scores = read_at(tables, "scores", versions["scores"])
        cols = [c for c in ("punsafe", "pwatermark", "aesthetic") if c in scores.columns]
        df = df.join(scores.select("sample_id", *cols), "sample_id", "left")
    for c in ("punsafe", "pwatermark", "aesthetic"):
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast("float"))
    df = df.withColumn("uid", _uid(F.col("original_id"), F.col("sample_id")))
    df = df.withColumn("original_width", F.coalesce("original_width", "_cand_ow"))
    df = df.withColumn("original_height", F.coalesce("original_height", "_cand_oh"))
    df = df.withColumn("repeat", F.coalesce(F.col("repeat"), F.lit(1)).cast("int"))
    df = df.withColumn(
        "size", F.coalesce(F.col("_num_bytes"), F.lit(0)).cast("long") + SAMPLE_OVERHEAD_BYTES
    )
    skip = F.when(F.col("_has_cand").isNull(), F.lit("no_candidate"))
    if "image" in needs:
        skip = skip.when(F.col("_has_image").isNull(), F.lit("no_image"))
    if "embeddings" in needs:
        skip = skip.when(F.col("_has_emb").isNull(), F.lit("no_embedding"))
    taken = _taken_down(tables, versions, rules) if rules else None
    if taken is not None:
        skip = skip.when(taken, F.lit("taken_down"))
    df = df.withColumn("_skip", skip.otherwise(F.lit(None).cast("string")))
    pool_key = F.col("_pool_key")
    base = F.when(pool_key.rlike(KEY_PATTERN), pool_key).otherwise(F.col("sample_id"))
    return df.withColumn("_base_key", base).drop(
        "_has_cand", "_has_image", "_has_emb", "_num_bytes", "_cand_ow", "_cand_oh", "_pool_key"
    )


def md5_blocked(tables: Tables, versions: dict[str, int | None], rules: TakedownRules) -> set:
    """sample_ids whose stored bytes have an md5 a takedown lists (images read only then)."""
    if not rules.md5 or versions.get("images") is None:
        return set()
    img = read_at(tables, "images", versions["images"]).select(
        "sample_id", F.md5("image").alias("_md5")
    )
    blocked = img.where(F.col("_md5").isin(*sorted(rules.md5))).select("sample_id")
    return {r[0] for r in blocked.collect()}


def _taken_down(
    tables: Tables, versions: dict[str, int | None], rules: TakedownRules
) -> Column | None:
    """True for rows a takedown names (URL, domain, sample_id, image sha256); None: no rule
    can match. Sets are column expressions; only URL and domain rules need a Python UDF
    (URL normalisation)."""
    conds: list[Column] = []
    ids = set(rules.sample_ids) | md5_blocked(tables, versions, rules)
    if ids:
        conds.append(F.col("sample_id").isin(*sorted(ids)))
    if rules.sha256:
        conds.append(F.coalesce(F.col("sha256").isin(*sorted(rules.sha256)), F.lit(False)))
    if rules.urls or rules.url_hashes or rules.domains:
        bc = tables.spark.sparkContext.broadcast(rules)

        @F.udf("boolean")
        def _blocked(url):
            return is_taken_down(bc.value, url)

        conds.append(_blocked(F.col("url")))
    if not conds:
        return None
    out = conds[0]
    for c in conds[1:]:
        out = out | c
    return out


def keyed_rows(narrow: DataFrame, repeats: str) -> DataFrame:
    """Rows with their final `key` and `copy` (one row per copy when expanded); skipped
    samples stay as one row with their `_skip` reason, for the counts."""
    ok = F.col("_skip").isNull()
    # a key two samples would share (two pools with the same numbering) -> their sample_ids
    shared = F.sum(F.when(ok, 1).otherwise(0)).over(Window.partitionBy("_base_key"))
    df = narrow.withColumn(
        "_base_key",
        F.when(shared > 1, F.col("sample_id")).otherwise(F.col("_base_key")),
    )
    df = _copies(df, ok, repeats)
    return df.withColumn("key", _copy_key(F.col("_base_key"))).drop("_base_key")


def _copies(df: DataFrame, ok: Column, repeats: str) -> DataFrame:
    # one row per copy: `repeat` copies of an exportable sample when expanded, else one
    n = F.greatest(F.when(ok, F.col("repeat")).otherwise(1), F.lit(1))
    copies = n if repeats == "expand" else F.lit(1)
    return df.withColumn("copy", F.explode(F.sequence(F.lit(0), copies - 1)))


def _copy_key(base: Column) -> Column:
    return F.when(F.col("copy") == 0, base).otherwise(
        F.concat(base, F.lit("_"), F.lpad(F.col("copy").cast("string"), 4, "0"))
    )


def seed_order(seed: int, key: Column) -> Column:
    """The deterministic shuffle's order of a key (then the key itself breaks ties)."""
    return F.xxhash64(F.lit(int(seed)), key)


def local_rows(narrow: DataFrame, repeats: str, seed: int | None) -> DataFrame:
    """`narrow` with copies exploded and, per row, both keys it may get: `_key_pool` (from
    `_base_key`) and `_key_sid` (from sample_id, when the base key is shared), with their
    seeded order when `seed` is set. Takedowns are not applied yet: `resolve_local` does
    both on the driver."""
    ok = F.col("_skip").isNull()
    df = _copies(narrow, ok, repeats)
    df = df.withColumn("_key_pool", _copy_key(F.col("_base_key")))
    df = df.withColumn("_key_sid", _copy_key(F.col("sample_id")))
    if seed is not None:
        df = df.withColumn("_ord_pool", seed_order(seed, F.col("_key_pool")))
        df = df.withColumn("_ord_sid", seed_order(seed, F.col("_key_sid")))
    return df


def resolve_local(table, rules: TakedownRules, md5_ids: set, seeded: bool):
    """`local_rows` collected (an Arrow table) -> the rows `keyed_rows` gives: takedowns
    marked in `_skip` (one row per skipped sample), `key` (and `_order` when seeded)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    skip = table.column("_skip")
    ok = pc.is_null(skip).to_numpy(zero_copy_only=False)
    taken = np.zeros(table.num_rows, bool)
    if rules or md5_ids:
        ids = set(rules.sample_ids) | md5_ids
        if ids:
            taken |= pc.is_in(table.column("sample_id"), pa.array(sorted(ids))).to_numpy(
                zero_copy_only=False
            )
        if rules.sha256:
            hit = pc.is_in(table.column("sha256"), pa.array(sorted(rules.sha256)))
            taken |= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
        if rules.urls or rules.url_hashes or rules.domains:
            urls = table.column("url").to_pylist()
            taken |= np.array(
                [bool(o) and is_taken_down(rules, u) for u, o in zip(urls, ok, strict=True)],
                bool,
            )
    taken &= ok
    if taken.any():
        copy = table.column("copy").to_numpy(zero_copy_only=False)
        keep = ~taken | (copy == 0)  # a taken-down sample counts once, like any skipped one
        skip = pc.if_else(pa.array(taken), pa.scalar("taken_down"), skip)
        table = table.set_column(table.schema.get_field_index("_skip"), "_skip", skip)
        table, ok = table.filter(pa.array(keep)), (ok & ~taken)[keep]
    # a key two exportable samples would share -> their sample_ids (for every copy)
    base = table.column("_base_key")
    first = ok & (table.column("copy").to_numpy(zero_copy_only=False) == 0)
    counts = pc.value_counts(base.filter(pa.array(first)))
    shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    use_sid = pc.is_in(base, shared)
    key = pc.if_else(use_sid, table.column("_key_sid"), table.column("_key_pool"))
    table = table.append_column("key", key)
    if seeded:
        order = pc.if_else(use_sid, table.column("_ord_sid"), table.column("_ord_pool"))
        table = table.append_column("_order", order)
    drop = [c for c in table.column_names if c.startswith(("_key_", "_ord_", "_base_key"))]
    return table.drop_columns(drop)


def plan_rows_bound(tables: Tables, subset: str, version: int | None, repeats: str) -> int | None:
    """At most how many rows an export of `subset` plans (repeats expanded), from the Delta
    log's per-file statistics of `subsets` (no Spark job; local path tables), else a
    Spark count. None: unknown."""
    if version is None:
        return 0
    loc = tables.location("subsets")
    if not tables.database and storage.is_local(loc):
        try:
            import pyarrow as pa
            from deltalake import DeltaTable

            adds = pa.table(DeltaTable(loc, version=int(version)).get_add_actions(flatten=True))
            lo = adds.column("min.subset").to_pylist()
            hi = adds.column("max.subset").to_pylist()
            n = adds.column("num_records").to_pylist()
            top = adds.column("max.repeat").to_pylist() if repeats == "expand" else [1] * len(n)
            total = 0
            for a, b, k, r in zip(lo, hi, n, top, strict=True):
                # string statistics may be truncated prefixes: skip a file only when the
                # name sorts before its min or after its max's prefix
                if (a is not None and subset < a) or (b is not None and subset[: len(b)] > b):
                    continue
                if k is None or (r is None and repeats == "expand"):
                    return None
                total += int(k) * max(1, int(r or 1))
            return total
        except Exception:  # no statistics: count with Spark
            pass
    sub = read_at(tables, "subsets", version).where(F.col("subset") == F.lit(subset))
    n = F.greatest(F.coalesce(F.col("repeat"), F.lit(1)), F.lit(1))
    agg = F.sum(n) if repeats == "expand" else F.count(F.lit(1))
    return int(sub.agg(agg).first()[0] or 0)


def payload_frame(
    tables: Tables, versions: dict[str, int | None], needs: frozenset[str], model_id: str | None
) -> DataFrame | None:
    """sample_id + what the writer needs besides metadata (image bytes, vectors), or None."""
    parts = []
    if "image" in needs:
        parts.append(
            read_at(tables, "images", versions["images"])
            .where((F.col("status") == F.lit("success")) & F.col("image").isNotNull())
            .select("sample_id", "image")
        )
    if "embeddings" in needs:
        parts.append(
            read_at(tables, "embeddings", versions["embeddings"])
            .where(F.col("model_id") == F.lit(model_id))
            .select("sample_id", "image_embedding", "text_embedding")
        )
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out.join(p, "sample_id")
    return out
