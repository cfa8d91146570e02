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
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from laion_spark.tables import Tables, spark_schema
from laion_spark.takedown.rules import is_taken_down, load_rules

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
) -> DataFrame:
    """One row per subset sample: metadata, `repeat`, `_base_key`, `size`, and `_skip` (null
    when exportable, else why not: no_candidate, no_image, no_embedding, taken_down)."""
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
    taken = _taken_down(tables, df, versions)
    if taken is not None:
        skip = skip.when(taken, F.lit("taken_down"))
    df = df.withColumn("_skip", skip.otherwise(F.lit(None).cast("string")))
    pool_key = F.col("_pool_key")
    base = F.when(pool_key.rlike(KEY_PATTERN), pool_key).otherwise(F.col("sample_id"))
    return df.withColumn("_base_key", base).drop(
        "_has_cand", "_has_image", "_has_emb", "_num_bytes", "_cand_ow", "_cand_oh", "_pool_key"
    )


def _taken_down(tables: Tables, df: DataFrame, versions: dict[str, int | None]) -> Column | None:
    """True for rows a takedown names (URL, domain, sample_id, image sha256); None: no rules."""
    rules = load_rules(tables)
    if not rules:
        return None
    bc = df.sparkSession.sparkContext.broadcast(rules)

    @F.udf("boolean")
    def _blocked(url, sid):
        return is_taken_down(bc.value, url, sid)

    cond = _blocked(F.col("url"), F.col("sample_id"))
    if rules.sha256:
        cond = cond | F.coalesce(F.col("sha256").isin(*sorted(rules.sha256)), F.lit(False))
    if rules.md5:
        # md5 of the stored bytes: read only when a takedown lists one
        img = read_at(tables, "images", versions["images"]).select(
            "sample_id", F.md5("image").alias("_md5")
        )
        blocked = img.where(F.col("_md5").isin(*sorted(rules.md5))).select("sample_id")
        ids = {r[0] for r in blocked.collect()}
        if ids:
            cond = cond | F.col("sample_id").isin(*sorted(ids))
    return cond


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
    copies = F.when(ok, F.col("repeat")).otherwise(1) if repeats == "expand" else F.lit(1)
    df = df.withColumn("copy", F.explode(F.sequence(F.lit(0), copies - 1)))
    key = F.when(F.col("copy") == 0, F.col("_base_key")).otherwise(
        F.concat(F.col("_base_key"), F.lit("_"), F.lpad(F.col("copy").cast("string"), 4, "0"))
    )
    return df.withColumn("key", key).drop("_base_key")


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
