"""Table registry, schemas, and the one MERGE every stage writes with.

Locally (and on S3/DBFS paths) a table is a Delta folder `<tables_root>/<name>`; with
`tables.database` set (Databricks Unity Catalog, Glue) it is the catalog table
`<database>.<name>`. Every table carries `sample_id` (see laion_spark.ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import Config

_S, _I, _L, _D, _F, _B = T.StringType(), T.IntegerType(), T.LongType(), T.DoubleType(), T.FloatType(), T.BinaryType()
_TS = T.TimestampType()


def _schema(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(n, t, True) for n, t in fields])


@dataclass(frozen=True)
class TableSpec:
    name: str
    keys: tuple[str, ...]
    schema: T.StructType
    doc: str


# Schemas are the contract between stages; docs/tables.md describes each column.
SPECS: dict[str, TableSpec] = {
    s.name: s
    for s in [
        TableSpec(
            "candidates",
            ("sample_id",),
            _schema(
                ("sample_id", _S), ("url", _S), ("text", _S), ("page_url", _S),
                ("language", _S), ("language_score", _F), ("language_group", _S),
                ("license", _S), ("source_file", _S), ("source_offset", _L), ("crawl_id", _S),
                ("original_id", _S), ("original_width", _I), ("original_height", _I),
                ("extracted_at", _TS),
                # wat | warc | laion | datacomp; other columns of imported metadata as strings
                ("source_format", _S), ("original_meta", T.MapType(_S, _S)),
            ),
            "image-text pairs from WAT/WARC or imported LAION/DataComp metadata",
        ),
        TableSpec(
            "extract_stats",
            ("source_file",),
            _schema(
                ("source_file", _S), ("records", _L), ("pages", _L), ("pairs", _L),
                ("bad_records", _L), ("rejected", T.MapType(_S, _L)), ("errors", T.MapType(_S, _L)),
                ("seconds", _D), ("finished_at", _TS),
                # ok | partial (some bad records) | failed (file unreadable); first error text
                ("status", _S), ("error_message", _S), ("crawl_id", _S),
            ),
            "per input file: records read, pairs emitted, rejections and errors by reason",
        ),
        TableSpec(
            "images",
            ("sample_id",),
            _schema(
                ("sample_id", _S), ("url", _S), ("status", _S), ("error_message", _S),
                ("http_status", _I), ("image", _B), ("width", _I), ("height", _I),
                ("original_width", _I), ("original_height", _I), ("sha256", _S), ("format", _S),
                ("original_format", _S), ("num_bytes", _L), ("fetch_seconds", _D),
                ("downloaded_at", _TS),
            ),
            "one row per candidate: status, error message, resized encoded image bytes",
        ),
        TableSpec(
            "embeddings",
            ("sample_id", "model_id"),
            _schema(
                ("sample_id", _S), ("model_id", _S), ("image_embedding", T.ArrayType(_F)),
                ("text_embedding", T.ArrayType(_F)), ("similarity", _F), ("status", _S),
                ("error_message", _S), ("embedded_at", _TS),
            ),
            "L2-normalised CLIP image/text embeddings and their cosine similarity, per model",
        ),
        TableSpec(
            "scores",
            ("sample_id",),
            _schema(
                ("sample_id", _S), ("model_id", _S), ("punsafe", _F), ("pwatermark", _F),
                ("toxicity", _F), ("aesthetic", _F), ("nsfw_tag", _S),
                ("flags", T.ArrayType(_S)), ("score_models", T.MapType(_S, _S)), ("scored_at", _TS),
            ),
            "safety and quality scores (columns may be added by curate: flyt_score, ...)",
        ),
        TableSpec(
            "subsets",
            ("subset", "sample_id"),
            _schema(("subset", _S), ("sample_id", _S), ("repeat", _I), ("created_at", _TS)),
            "which samples a filter or sampler kept, with repeat counts",
        ),
        TableSpec(
            "index_manifest",
            ("index_name", "shard"),
            _schema(
                ("index_name", _S), ("shard", _S), ("kind", _S), ("path", _S), ("factory", _S),
                ("model_id", _S), ("count", _L), ("dim", _I), ("recall_at_10", _D),
                ("build_seconds", _D), ("size_bytes", _L), ("created_at", _TS),
                ("metric", _S), ("run_id", _S), ("params", _S),
            ),
            "faiss shards and merged indexes: files, factory, counts, measured recall "
            "(kind: trained | shard | merged; params: JSON search params such as nprobe)",
        ),
        TableSpec(
            "index_ids",
            ("index_name", "sample_id"),
            _schema(("index_name", _S), ("sample_id", _S), ("faiss_id", _L), ("shard", _S)),
            "faiss int64 id <-> sample_id for each index",
        ),
        TableSpec(
            "takedowns",
            ("request_id",),
            _schema(
                ("request_id", _S), ("kind", _S), ("value", _S), ("reason", _S),
                ("removed", T.MapType(_S, _L)), ("requested_at", _TS),
            ),
            "takedown requests (url, domain, sha256, md5, sample_id) and what they removed",
        ),
    ]
}


class Tables:
    """Where each table lives for a config, plus read / upsert / exists helpers."""

    def __init__(self, spark: SparkSession, cfg: Config):
        self.spark = spark
        self.cfg = cfg
        self.root = cfg.tables_root.rstrip("/")
        self.database = cfg.tables.database

    def location(self, name: str) -> str:
        """Folder of a path-based table, or the catalog name."""
        return f"{self.database}.{name}" if self.database else f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        from delta.tables import DeltaTable

        if self.database:
            return self.spark.catalog.tableExists(f"{self.database}.{name}")
        return DeltaTable.isDeltaTable(self.spark, self.location(name))

    def delta(self, name: str):
        from delta.tables import DeltaTable

        if self.database:
            return DeltaTable.forName(self.spark, self.location(name))
        return DeltaTable.forPath(self.spark, self.location(name))

    def ensure(self, name: str) -> None:
        """Create the table empty with its declared schema if it does not exist."""
        if self.exists(name):
            return
        spec = SPECS[name]
        empty = self.spark.createDataFrame([], spec.schema)
        self._write_new(empty, name)

    def _write_new(self, df: DataFrame, name: str) -> None:
        w = df.write.format("delta").mode("append").option("mergeSchema", "true")
        if self.database:
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            w.saveAsTable(self.location(name))
        else:
            w.save(self.location(name))

    def read(self, name: str) -> DataFrame:
        """The table as a DataFrame (empty with the declared schema if not yet written)."""
        self.ensure(name)
        if self.database:
            return self.spark.read.table(self.location(name))
        return self.spark.read.format("delta").load(self.location(name))

    def sql_name(self, name: str) -> str:
        """How to name the table in SQL: `db.name` or delta.`/path`."""
        return self.location(name) if self.database else f"delta.`{self.location(name)}`"

    def register_views(self) -> list[str]:
        """Temp views named after each existing table, so `SELECT * FROM images` works."""
        names = []
        for name in SPECS:
            if self.exists(name):
                self.read(name).createOrReplaceTempView(name)
                names.append(name)
        return names

    def upsert(
        self,
        df: DataFrame,
        name: str,
        keys: Sequence[str] | None = None,
        update: bool = True,
        dedup: bool = True,
    ) -> None:
        """MERGE `df` into table `name` on its keys (default: the table's declared keys).

        The source is deduplicated on the keys first (MERGE fails on duplicate source
        keys). Matched rows get the source's columns updated (only those columns, so a
        stage can fill part of a row); unmatched rows are inserted. New columns are
        added to the table (schema evolution). `update=False` only inserts new keys: Delta
        then runs one anti-join + append instead of a join that finds touched files and a
        full outer join that rewrites them. `dedup=False` skips the deduplication shuffle
        when the caller guarantees unique keys (e.g. rows derived 1:1 from a deduplicated
        chunk); it matters when rows carry image bytes.
        """
        keys = tuple(keys or SPECS[name].keys)
        src = df.dropDuplicates(list(keys)) if dedup else df
        if not self.exists(name):
            spec = SPECS.get(name)
            if spec is not None:
                # create with the declared schema so columns a stage did not fill still exist
                self.ensure(name)
            else:
                self._write_new(src.limit(0), name)
        cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        target_cols = set(self.read(name).columns)
        missing = [c for c in src.columns if c not in target_cols]
        if missing:
            # evolve the schema explicitly: an empty append with mergeSchema adds the columns
            self._write_new(src.limit(0), name)
        cols = {f"`{c}`": f"s.`{c}`" for c in src.columns}
        merge = self.delta(name).alias("t").merge(src.alias("s"), cond)
        updates = {k: v for k, v in cols.items() if k.strip("`") not in keys}
        if update and updates:
            merge = merge.whenMatchedUpdate(set=updates)
        merge.whenNotMatchedInsert(values=cols).execute()

    def pending(self, source: DataFrame, name: str, keys: Sequence[str] = ("sample_id",), where: str | None = None) -> DataFrame:
        """Rows of `source` with no row in table `name` yet (optionally only rows matching `where`)."""
        done = self.read(name)
        if where:
            done = done.where(where)
        return source.join(done.select(*keys).distinct(), on=list(keys), how="left_anti")

    def counts(self) -> list[dict]:
        """Each existing table: name, location, row count, Delta version."""
        out = []
        for name in SPECS:
            if not self.exists(name):
                continue
            hist = self.delta(name).history(1).select("version").collect()
            out.append(
                {
                    "table": name,
                    "rows": self.read(name).count(),
                    "version": int(hist[0]["version"]) if hist else 0,
                    "location": self.location(name),
                }
            )
        return out


def now_col():
    return F.current_timestamp()
