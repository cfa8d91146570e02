"""Table registry, schemas, and the one writer every stage writes with.

Locally (and on S3/DBFS paths) a table is a Delta folder `<tables_root>/<name>`; with
`tables.database` set (Databricks Unity Catalog, Glue) it is the catalog table
`<database>.<name>`. Every table carries `sample_id` (see laion_spark.ids), except the
bookkeeping tables keyed otherwise (`extract_stats`, `runs`, `takedowns`, `purges`,
`index_manifest`).

`SPECS` is the contract: Spark schemas (`spark_schema`) and Arrow schemas (`arrow_schema`)
of what stages write are derived from it, never written out again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import Config

log = logging.getLogger(__name__)
_T = TypeVar("_T")

STRING, INT, LONG = T.StringType(), T.IntegerType(), T.LongType()
FLOAT, DOUBLE, BINARY, TIMESTAMP = T.FloatType(), T.DoubleType(), T.BinaryType(), T.TimestampType()


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
                ("sample_id", STRING),
                ("url", STRING),
                ("text", STRING),
                ("page_url", STRING),
                ("language", STRING),
                ("language_score", FLOAT),
                ("language_group", STRING),
                ("license", STRING),
                ("source_file", STRING),
                ("source_offset", LONG),
                ("crawl_id", STRING),
                ("original_id", STRING),
                ("original_width", INT),
                ("original_height", INT),
                ("extracted_at", TIMESTAMP),
                # wat | warc | laion | datacomp; other columns of imported metadata as strings
                ("source_format", STRING),
                ("original_meta", T.MapType(STRING, STRING)),
            ),
            "image-text pairs from WAT/WARC or imported LAION/DataComp metadata",
        ),
        TableSpec(
            "extract_stats",
            ("source_file",),
            _schema(
                ("source_file", STRING),
                ("records", LONG),
                ("pages", LONG),
                ("pairs", LONG),
                ("bad_records", LONG),
                ("rejected", T.MapType(STRING, LONG)),
                ("errors", T.MapType(STRING, LONG)),
                ("seconds", DOUBLE),
                ("finished_at", TIMESTAMP),
                # ok | partial (some bad records) | failed (file unreadable, retried) |
                # unsupported_format (e.g. ARC, not retried); first error text
                ("status", STRING),
                ("error_message", STRING),
                ("crawl_id", STRING),
                # which entity rule a WAT got (decoded | raw, and why); null for WARC
                ("wat_entities", STRING),
            ),
            "per input file: records read, pairs emitted, rejections and errors by reason",
        ),
        TableSpec(
            "images",
            ("sample_id",),
            _schema(
                ("sample_id", STRING),
                ("url", STRING),
                ("status", STRING),
                ("error_message", STRING),
                ("http_status", INT),
                ("image", BINARY),
                ("width", INT),
                ("height", INT),
                ("original_width", INT),
                ("original_height", INT),
                ("sha256", STRING),
                ("format", STRING),
                ("original_format", STRING),
                ("num_bytes", LONG),
                ("fetch_seconds", DOUBLE),
                ("downloaded_at", TIMESTAMP),
                # PDQ perceptual hash of the stored image (64 hex digits) and its quality
                # (0-100; below 50 the hash is unreliable), matched by `takedown --kind pdq`
                ("pdq", STRING),
                ("pdq_quality", INT),
            ),
            "one row per candidate: status, error message, resized encoded image bytes, PDQ hash",
        ),
        TableSpec(
            "embeddings",
            ("sample_id", "model_id"),
            _schema(
                ("sample_id", STRING),
                ("model_id", STRING),
                # the text tower of text_embedding/similarity: model_id's own, or the
                # multilingual tower of the caption's language group (null: model_id's own)
                ("text_model_id", STRING),
                ("image_embedding", T.ArrayType(FLOAT)),
                ("text_embedding", T.ArrayType(FLOAT)),
                ("similarity", FLOAT),
                ("status", STRING),
                ("error_message", STRING),
                ("embedded_at", TIMESTAMP),
            ),
            "L2-normalised CLIP image/text embeddings and their cosine similarity, per image "
            "model; `text_model_id` is the text tower that embedded the caption (the model's "
            "own, or the multilingual tower of its language group; null in rows written "
            "before the column existed: the model's own)",
        ),
        TableSpec(
            "scores",
            ("sample_id",),
            _schema(
                ("sample_id", STRING),
                ("model_id", STRING),
                ("punsafe", FLOAT),
                ("pwatermark", FLOAT),
                ("toxicity", FLOAT),
                ("aesthetic", FLOAT),
                ("nsfw_tag", STRING),
                ("flags", T.ArrayType(STRING)),
                ("score_models", T.MapType(STRING, STRING)),
                ("scored_at", TIMESTAMP),
            ),
            "safety and quality scores (columns may be added by curate: flyt_score, ...)",
        ),
        TableSpec(
            "subsets",
            ("subset", "sample_id"),
            _schema(
                ("subset", STRING),
                ("sample_id", STRING),
                ("repeat", INT),
                ("created_at", TIMESTAMP),
            ),
            "which samples a filter or sampler kept, with repeat counts",
        ),
        TableSpec(
            "index_manifest",
            ("index_name", "shard"),
            _schema(
                ("index_name", STRING),
                ("shard", STRING),
                ("kind", STRING),
                ("path", STRING),
                ("factory", STRING),
                ("model_id", STRING),
                ("count", LONG),
                ("dim", INT),
                ("recall_at_10", DOUBLE),
                ("build_seconds", DOUBLE),
                ("size_bytes", LONG),
                ("created_at", TIMESTAMP),
                ("metric", STRING),
                ("run_id", STRING),
                ("params", STRING),
            ),
            "faiss shards and merged indexes: files, factory, counts, measured recall "
            "(kind: trained | shard | merged; params: JSON search params such as nprobe)",
        ),
        TableSpec(
            "index_ids",
            ("index_name", "sample_id"),
            _schema(
                ("index_name", STRING), ("sample_id", STRING), ("faiss_id", LONG), ("shard", STRING)
            ),
            "faiss int64 id <-> sample_id for each index",
        ),
        TableSpec(
            "takedowns",
            ("request_id",),
            _schema(
                ("request_id", STRING),
                ("kind", STRING),
                ("value", STRING),
                ("reason", STRING),
                ("removed", T.MapType(STRING, LONG)),
                ("requested_at", TIMESTAMP),
                # the resolution, taken before anything is deleted: everything derived from
                # the matched samples, so merge, search, export and purge honour it later
                ("sample_ids", T.ArrayType(STRING)),
                ("faiss_ids", T.MapType(STRING, T.ArrayType(LONG))),  # index name -> ids
                ("shards", T.MapType(STRING, T.ArrayType(STRING))),  # index name -> shards
                ("sha256", T.ArrayType(STRING)),
                ("pdq", T.ArrayType(STRING)),
                ("url_hashes", T.ArrayType(STRING)),  # sha256 of each normalised URL
                ("max_distance", INT),  # pdq: Hamming distance the match used
                ("resolved_at", TIMESTAMP),
                # set by purge (the value of a url request is then kept only as sha256:<hex>)
                ("purge_id", STRING),
                ("purged_at", TIMESTAMP),
            ),
            "takedown requests (url, domain, sha256, md5, pdq, sample_id), their resolution "
            "to every derived id, and what they removed",
        ),
        TableSpec(
            "purges",
            ("purge_id",),
            _schema(
                ("purge_id", STRING),
                ("request_ids", T.ArrayType(STRING)),
                ("samples", LONG),
                # table -> data files VACUUM deleted; table -> log files removed before the
                # checkpoint (old versions, whose stats hold column prefixes)
                ("files_removed", T.MapType(STRING, LONG)),
                ("log_files_removed", T.MapType(STRING, LONG)),
                ("retain_hours", DOUBLE),
                ("index_files", T.ArrayType(STRING)),  # "rewritten|deleted: <path>"
                ("exports", T.ArrayType(STRING)),  # "rewritten|deleted|listed: <path> (why)"
                ("complete", T.BooleanType()),
                ("notes", STRING),
                ("started_at", TIMESTAMP),
                ("seconds", DOUBLE),
            ),
            "purges: what `laion-spark purge` physically erased (Delta files, old log "
            "versions, index shards and merged files, export shards) for which requests",
        ),
        TableSpec(
            "exports",
            ("export_id",),
            _schema(
                # 16 hex of sha256(target): one row per target, describing what is there now
                ("export_id", STRING),
                ("subset", STRING),
                # webdataset | laion | parquet | uids (export.formats); a reshard writes webdataset
                ("format", STRING),
                ("target", STRING),
                # every file the export wrote, as full paths (shards and their metadata)
                ("shard_paths", T.ArrayType(STRING)),
                ("sample_count", LONG),
                ("created_at", TIMESTAMP),
                ("manifest_path", STRING),
                # sha256 of the inputs (Delta versions read, options): equal = nothing to do
                ("inputs_digest", STRING),
                ("delta_versions", T.MapType(STRING, LONG)),
            ),
            "exported shard sets (WebDataset, LAION format, parquet, uids) and where they are, "
            "so a takedown can find the shards that hold a sample (each shard's parquet lists "
            "its sample_ids)",
        ),
        TableSpec(
            "sft_pool",
            ("pool_id",),
            _schema(
                # sha256(source, original id, image ref, instruction)[:32 hex]: stable on re-import
                ("pool_id", STRING),
                ("source", STRING),  # llava_json | images
                ("original_id", STRING),  # the SFT record's "id", or our sample_id
                ("sample_id", STRING),  # set when the row comes from our images table
                ("image_ref", STRING),  # image path/URI as the SFT file names it, or the URL
                ("image", BINARY),  # encoded image bytes (executors need no file access)
                ("image_sha256", STRING),
                ("instruction", STRING),  # the first human turn without the <image> tag
                ("reference", STRING),  # the SFT answer (first gpt turn) or our caption
                ("conversations", STRING),  # the record's conversations as JSON
                ("status", STRING),  # ok | missing_image | bad_image | too_large | bad_record
                ("error_message", STRING),
                ("imported_at", TIMESTAMP),
                # filled by dpo_score: text-heavy image detection (which detector, its score)
                ("text_detector", STRING),
                ("text_score", FLOAT),
                ("text_heavy", T.BooleanType()),
            ),
            "CLIP-DPO input: (image, instruction) rows from LLaVA-style SFT JSON or our images",
        ),
        TableSpec(
            "dpo_candidates",
            ("candidate_id",),
            _schema(
                # sha256(pool_id, template, model_id, sample_index)[:32 hex]
                ("candidate_id", STRING),
                ("pool_id", STRING),
                ("template", STRING),  # prompt template name (short, detailed, instruction, ...)
                ("prompt", STRING),  # the prompt text the model answered
                ("response", STRING),
                ("sample_index", INT),  # 0..N-1 within (pool_id, template)
                ("source", STRING),  # generated | imported
                ("model_id", STRING),  # <name>@<12 hex of the weights' sha256>
                ("temperature", FLOAT),
                ("top_p", FLOAT),
                ("max_new_tokens", INT),
                ("seed", LONG),
                # success | failed_to_decode | failed_to_generate | empty_response
                ("status", STRING),
                ("error_message", STRING),
                ("generated_at", TIMESTAMP),
                # filled by dpo_score: raw cosine per CLIP model, their mean, chunk count
                ("clip_scores", T.MapType(STRING, FLOAT)),
                ("clip_score", FLOAT),
                ("score_chunks", INT),
                ("scorer_id", STRING),  # the ensemble + aggregation that scored the row
                ("scored_at", TIMESTAMP),
            ),
            "CLIP-DPO responses: one row per sampled (or imported) response, with CLIP scores",
        ),
        TableSpec(
            "dpo_pairs",
            ("selection", "pair_id"),
            _schema(
                ("selection", STRING),  # dpo.select.name
                ("pair_id", STRING),  # sha256(chosen candidate_id, rejected candidate_id)[:32]
                ("pool_id", STRING),
                ("image_sha256", STRING),
                ("image_ref", STRING),
                ("template", STRING),
                ("prompt", STRING),
                ("chosen", STRING),
                ("rejected", STRING),
                ("chosen_id", STRING),
                ("rejected_id", STRING),
                ("chosen_score", FLOAT),  # ensemble score (normalised, first scorer's scale)
                ("rejected_score", FLOAT),
                ("margin", FLOAT),
                ("length_ratio", FLOAT),  # longer / shorter, in words
                ("similarity", FLOAT),  # word-sequence similarity of the two responses
                # rules the pair breaks that this selection does not enforce (e.g. a rule
                # switched off); kept pairs of a fully enforced selection have none
                ("flags", T.ArrayType(STRING)),
                ("generator_model_id", STRING),
                ("scorer_id", STRING),
                ("selected_at", TIMESTAMP),
            ),
            "CLIP-DPO preference pairs that passed the rule-based filter (chosen, rejected)",
        ),
        TableSpec(
            "runs",
            ("run_id",),
            _schema(
                ("run_id", STRING),
                ("stage", STRING),
                ("status", STRING),
                ("error_message", STRING),
                ("rows_in", LONG),
                ("rows_out", LONG),
                ("by_status", T.MapType(STRING, LONG)),
                # note values as JSON text (numbers, strings, lists alike)
                ("notes", T.MapType(STRING, STRING)),
                ("options", STRING),
                ("config_digest", STRING),
                ("stage_config", STRING),
                ("started_at", TIMESTAMP),
                ("seconds", DOUBLE),
            ),
            "one row per stage run: what it did (StageResult), with which config (digest and "
            "the stage's section as JSON); `laion-spark tables`/`status`/`report` read it",
        ),
    ]
}


def spark_schema(name: str, columns: Iterable[str] | None = None) -> T.StructType:
    """The declared schema of table `name`, or of `columns` of it in the order given."""
    fields = {f.name: f for f in SPECS[name].schema.fields}
    if columns is None:
        return SPECS[name].schema
    missing = [c for c in columns if c not in fields]
    if missing:
        raise KeyError(f"table {name} has no column(s) {missing}")
    return T.StructType([fields[c] for c in columns])


def _arrow_type(dt: T.DataType) -> Any:
    import pyarrow as pa

    simple = {
        T.StringType: pa.string(),
        T.IntegerType: pa.int32(),
        T.LongType: pa.int64(),
        T.FloatType: pa.float32(),
        T.DoubleType: pa.float64(),
        T.BinaryType: pa.binary(),
        T.BooleanType: pa.bool_(),
        T.TimestampType: pa.timestamp("us", tz="UTC"),
    }
    for cls, at in simple.items():
        if isinstance(dt, cls):
            return at
    if isinstance(dt, T.ArrayType):
        return pa.list_(_arrow_type(dt.elementType))
    if isinstance(dt, T.MapType):
        return pa.map_(_arrow_type(dt.keyType), _arrow_type(dt.valueType))
    raise TypeError(f"no Arrow type for {dt}")


def arrow_schema(name: str, columns: Iterable[str] | None = None) -> Any:
    """`spark_schema(name, columns)` as a pyarrow schema (for mapInArrow output batches)."""
    import pyarrow as pa

    return pa.schema([(f.name, _arrow_type(f.dataType)) for f in spark_schema(name, columns)])


def arrow_rows(name: str, rows: list[dict]) -> Any:
    """Plain rows (map columns as dicts) as an Arrow table in table `name`'s declared
    schema, absent columns null: what the in-process writers hand to `upsert_local`."""
    import pyarrow as pa

    schema = arrow_schema(name)
    maps = [f.name for f in schema if pa.types.is_map(f.type)]
    # map columns as item lists: older pyarrow does not take dicts for them
    fixed = [
        {**r, **{m: list(r[m].items()) for m in maps if isinstance(r.get(m), dict)}} for r in rows
    ]
    return pa.Table.from_pylist(fixed, schema)


class Tables:
    """Where each table lives for a config, and the one writer of every table.

    Writes go through `upsert` (MERGE by key), `replace` (a keyed MERGE plus the delete of
    rows the new selection no longer holds, within a scope), `delete` or `append`. Each
    returns Delta's own operation metrics, so callers never count twice.
    """

    # how many times a MERGE is tried when concurrent writers keep committing first
    commit_attempts = 5
    retry_backoff_s = 0.5

    def __init__(self, spark: SparkSession, cfg: Config):
        self.spark = spark
        self.cfg = cfg
        self.root = cfg.tables_root.rstrip("/")
        self.database = cfg.tables.database

    def location(self, name: str) -> str:
        """Folder of a path-based table, or the catalog name."""
        return f"{self.database}.{name}" if self.database else f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        if self.local(name):  # the log read by delta-rs: no JVM call
            from deltalake import DeltaTable
            from deltalake.exceptions import TableNotFoundError

            try:
                DeltaTable(self.location(name))
                return True
            except TableNotFoundError:
                return False
        from delta.tables import DeltaTable

        if self.database:
            return self.spark.catalog.tableExists(f"{self.database}.{name}")
        return DeltaTable.isDeltaTable(self.spark, self.location(name))

    def delta(self, name: str):
        from delta.tables import DeltaTable

        if self.database:
            return DeltaTable.forName(self.spark, self.location(name))
        return DeltaTable.forPath(self.spark, self.location(name))

    def ensure(self, name: str, schema: T.StructType | None = None) -> None:
        """Create the table with its declared schema (or `schema`) if it does not exist."""
        if self.exists(name):
            return
        from delta.tables import DeltaTable

        schema = schema if schema is not None else SPECS[name].schema
        builder = DeltaTable.createIfNotExists(self.spark)
        if self.database:
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            builder = builder.tableName(self.location(name))
        else:
            builder = builder.location(self.location(name))
        builder.addColumns(schema).execute()

    def read(self, name: str) -> DataFrame:
        """The table as a DataFrame (empty with the declared schema if not yet written)."""
        self.ensure(name)
        if self.database:
            return self.spark.read.table(self.location(name))
        return self.spark.read.format("delta").load(self.location(name))

    def register_views(self) -> list[str]:
        """Temp views named after each existing table, so `SELECT * FROM images` works."""
        names = []
        for name in SPECS:
            if self.exists(name):
                self.read(name).createOrReplaceTempView(name)
                names.append(name)
        return names

    def _create_for(self, df: DataFrame, name: str) -> None:
        # declared tables get their whole schema (columns a stage did not fill still exist);
        # others (none today) the source's
        self.ensure(name, None if name in SPECS else df.schema)

    def upsert(
        self,
        df: DataFrame,
        name: str,
        keys: Sequence[str] | None = None,
        update: bool = True,
        dedup: bool = True,
    ) -> dict[str, int]:
        """MERGE `df` into table `name` on its keys (default: the table's declared keys).

        The source is deduplicated on the keys first (MERGE fails on duplicate source
        keys). Matched rows get the source's columns updated (only those columns, so a
        stage can fill part of a row); unmatched rows are inserted. New columns are added
        to the table (MERGE schema evolution). `update=False` only inserts new keys: Delta
        then runs one anti-join + append instead of a join that finds touched files and a
        full outer join that rewrites them. `dedup=False` skips the deduplication shuffle
        when the caller guarantees unique keys (e.g. rows derived 1:1 from a deduplicated
        chunk); it matters when rows carry image bytes. Returns Delta's metrics
        (num_inserted_rows, num_updated_rows, num_deleted_rows, num_affected_rows).
        """
        keys = tuple(keys or SPECS[name].keys)
        src = df.dropDuplicates(list(keys)) if dedup else df
        cols = {f"`{c}`": f"s.`{c}`" for c in src.columns}
        updates = {k: v for k, v in cols.items() if k.strip("`") not in keys}

        def attempt() -> dict[str, int]:
            self._create_for(src, name)
            merge = (
                self.delta(name)
                .alias("t")
                .merge(src.alias("s"), _key_condition(keys))
                .withSchemaEvolution()
            )
            if update and updates:
                merge = merge.whenMatchedUpdate(set=updates)
            return _metrics(merge.whenNotMatchedInsert(values=cols).execute())

        return self._committed(name, "upsert", attempt)

    def replace(
        self, df: DataFrame, name: str, scope: dict[str, Any], keys: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Make the rows of `name` within `scope` (column -> value) exactly `df`'s rows.

        One MERGE: rows of `df` are upserted, rows of the scope that `df` no longer holds
        are deleted; rows outside the scope are never touched. `df` must lie in the scope.
        """
        in_scope = F.lit(True)
        for col, value in scope.items():
            in_scope = in_scope & (F.col(f"t.`{col}`") == F.lit(value))
        return self._replace_where(df, name, in_scope, keys)

    def replace_in(
        self,
        df: DataFrame,
        name: str,
        column: str,
        values: Sequence[Any],
        keys: Sequence[str] | None = None,
    ) -> dict[str, int]:
        """`replace` for several scopes at once: the rows of `name` whose `column` is one of
        `values` become exactly `df`'s rows, in one MERGE (one commit instead of one per
        value); rows with any other value are never touched. `df` must lie in the scopes."""
        in_scope = F.col(f"t.`{column}`").isin([F.lit(v) for v in values])
        return self._replace_where(df, name, in_scope, keys)

    def _replace_where(
        self, df: DataFrame, name: str, in_scope: Column, keys: Sequence[str] | None
    ) -> dict[str, int]:
        keys = tuple(keys or SPECS[name].keys)
        cols = {f"`{c}`": f"s.`{c}`" for c in df.columns}
        updates = {k: v for k, v in cols.items() if k.strip("`") not in keys}

        def attempt() -> dict[str, int]:
            self._create_for(df, name)
            merge = self.delta(name).alias("t").merge(df.alias("s"), _key_condition(keys))
            if updates:
                merge = merge.whenMatchedUpdate(set=updates)
            merge = merge.whenNotMatchedInsert(values=cols)
            return _metrics(merge.whenNotMatchedBySourceDelete(condition=in_scope).execute())

        return self._committed(name, "replace", attempt)

    def _committed(self, name: str, what: str, attempt: Callable[[], _T]) -> _T:
        """Run one MERGE under Delta's optimistic concurrency: when another writer committed
        to `name` between our read and our commit, Delta refuses ours; run it again from the
        new version (the MERGE re-reads the table, so its join and any anti-join the source
        was built with are recomputed, and rows the other writer added are matched, not
        duplicated). After `commit_attempts` refusals, stop with a message that says so."""
        for n in range(1, self.commit_attempts + 1):
            try:
                return attempt()
            except Exception as e:  # noqa: BLE001 - only commit conflicts are retried
                conflict = _conflict_name(e)
                if conflict is None:
                    raise
                if n >= self.commit_attempts:
                    raise TableConflictError(
                        f"{what} of table {name} ({self.location(name)}) lost the commit to "
                        f"another writer {n} time(s) ({conflict}); another run is writing this "
                        "table: let it finish (or stop it), then run this stage again, which "
                        "resumes where the other stopped"
                    ) from e
                log.warning(
                    "%s of table %s: another writer committed first (%s); retrying (%d/%d)",
                    what,
                    name,
                    conflict,
                    n,
                    self.commit_attempts - 1,
                )
                # back off with jitter so two losers do not collide again in lockstep
                time.sleep(self.retry_backoff_s * n * (1 + random.random()))
        raise AssertionError("unreachable")

    def local(self, name: str) -> bool:
        """Whether `name` is a path-based table on this machine's filesystem: the tables a
        stage may read and write in-process with delta-rs (small runs, no Spark job)."""
        from laion_spark.storage import is_local

        return not self.database and is_local(self.location(name))

    def upsert_rows_local(self, rows: list[dict], name: str, update: bool = True) -> bool:
        """`upsert_local` of a few plain rows (map columns as dicts) for the records a run
        keeps (runs, exports, takedowns); False when delta-rs cannot write them (e.g. a column
        of another type in the table), and the caller writes them through Spark instead."""
        try:
            self.upsert_local(arrow_rows(name, rows), name, update=update)
            return True
        except Exception as e:  # noqa: BLE001 - any failure leaves the write to Spark
            log.info("delta-rs could not write %s (%s); writing it through Spark", name, e)
            return False

    def upsert_local(self, rows: Any, name: str, update: bool = True) -> dict[str, int]:
        """`upsert` of an Arrow table through delta-rs in this process (local tables only):
        the same MERGE on the declared keys, the table created with its declared schema
        when missing, commit conflicts retried as `upsert` retries them. For small writes,
        where a Spark MERGE's jobs cost seconds; `rows` must hold unique keys."""
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake
        from deltalake.exceptions import TableNotFoundError

        if not self.local(name):
            raise ValueError(f"upsert_local: table {name} is not a local path table")
        loc = self.location(name)
        keys = SPECS[name].keys
        full = arrow_schema(name)
        cols = {f.name for f in full}
        extra = [c for c in rows.column_names if c not in cols]
        if extra:
            raise ValueError(f"upsert_local: table {name} has no column(s) {extra}")
        # every declared column, in the declared order and types (absent ones null)
        rows = pa.table(
            [
                rows.column(f.name).cast(f.type)
                if f.name in rows.column_names
                else pa.nulls(len(rows), f.type)
                for f in full
            ],
            schema=full,
        )
        try:
            have = set(DeltaTable(loc).schema().to_arrow().names)
        except TableNotFoundError:
            write_deltalake(loc, full.empty_table(), mode="append")  # racing creators: append
            have = cols
        missing = [f for f in full if f.name not in have]
        if missing:
            # a table an older release made: add the declared columns first, as Spark's
            # MERGE evolves the schema (delta-rs's MERGE would drop their values silently)
            from deltalake import Field

            DeltaTable(loc).alter.add_columns([Field.from_arrow(f) for f in missing])
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

        def attempt() -> dict[str, int]:
            merge = DeltaTable(loc).merge(rows, predicate=on, source_alias="s", target_alias="t")
            if update:
                merge = merge.when_matched_update_all()
            m = merge.when_not_matched_insert_all().execute()
            return {
                "num_inserted_rows": int(m.get("num_target_rows_inserted", 0)),
                "num_updated_rows": int(m.get("num_target_rows_updated", 0)),
                "num_deleted_rows": int(m.get("num_target_rows_deleted", 0)),
                "num_affected_rows": int(m.get("num_target_rows_inserted", 0))
                + int(m.get("num_target_rows_updated", 0)),
            }

        return self._committed(name, "upsert", attempt)

    def delete_local(self, name: str, column: str, values: Iterable[str]) -> dict[str, int]:
        """`delete` of the rows whose string `column` is one of `values`, through one
        delta-rs MERGE in this process (local tables only; commit conflicts retried as
        `upsert` retries them). For small deletes (a takedown's few samples in each of a
        dozen tables), where each Spark MERGE costs seconds of jobs. The values travel as
        a source table, never as SQL text. Raises when delta-rs cannot write the table
        (e.g. a table feature it lacks): the caller then uses `delete`."""
        import pyarrow as pa
        from deltalake import DeltaTable

        if not self.local(name):
            raise ValueError(f"delete_local: table {name} is not a local path table")
        src = pa.table({column: pa.array(sorted(set(values)), pa.string())})
        if src.num_rows == 0 or not self.exists(name):
            return _metrics(None)
        loc = self.location(name)

        def attempt() -> dict[str, int]:
            m = (
                DeltaTable(loc)
                .merge(
                    src,
                    predicate=f"t.`{column}` = s.`{column}`",
                    source_alias="s",
                    target_alias="t",
                )
                .when_matched_delete()
                .execute()
            )
            n = int(m.get("num_target_rows_deleted", 0))
            return {**_metrics(None), "num_deleted_rows": n, "num_affected_rows": n}

        return self._committed(name, "delete", attempt)

    def delete(self, name: str, keys: DataFrame) -> dict[str, int]:
        """Delete the rows of `name` whose key columns (the columns of `keys`) match a row of
        `keys`; Delta's metrics say how many went."""
        if not self.exists(name):
            return _metrics(None)
        merge = (
            self.delta(name)
            .alias("t")
            .merge(keys.distinct().alias("s"), _key_condition(keys.columns))
        )
        return _metrics(merge.whenMatchedDelete().execute())

    def append(self, df: DataFrame, name: str) -> None:
        """Append rows whose keys are new by construction (e.g. `runs`: a fresh run_id)."""
        self._create_for(df, name)
        w = df.write.format("delta").mode("append").option("mergeSchema", "true")
        if self.database:
            w.saveAsTable(self.location(name))
        else:
            w.save(self.location(name))

    def pending(
        self,
        source: DataFrame,
        name: str,
        keys: Sequence[str] = ("sample_id",),
        where: Column | None = None,
    ) -> DataFrame:
        """Rows of `source` with no row in table `name` yet (optionally only rows matching `where`)."""
        done = self.read(name)
        if where is not None:
            done = done.where(where)
        return source.join(done.select(*keys).distinct(), on=list(keys), how="left_anti")

    def distinct(self, name: str, column: str) -> list:
        """Distinct non-null values of a low-cardinality column (e.g. embeddings.model_id).

        Path-based local tables answer from the Delta log's per-file min/max statistics
        when every file holds one value (no data file is read: the usual case of one model
        per commit); otherwise, and for catalog tables, a Spark DISTINCT.
        """
        if not self.exists(name):
            return []
        from laion_spark.storage import is_local

        if not self.database and is_local(self.location(name)):
            try:
                import pyarrow as pa
                from deltalake import DeltaTable

                adds = pa.table(DeltaTable(self.location(name)).get_add_actions(flatten=True))
                lo = adds.column(f"min.{column}").to_pylist()
                hi = adds.column(f"max.{column}").to_pylist()
                nulls = adds.column(f"null_count.{column}").to_pylist()
                counts = adds.column("num_records").to_pylist()
                if all(a is not None and a == b for a, b in zip(lo, hi, strict=True)) or all(
                    n == c for n, c in zip(nulls, counts, strict=True)
                ):
                    return sorted({a for a in lo if a is not None})
            except Exception:  # no statistics for the column: ask Spark
                pass
        rows = self.read(name).select(column).where(F.col(column).isNotNull()).distinct()
        return sorted(r[0] for r in rows.collect())

    def version(self, name: str) -> int | None:
        """Current Delta version of table `name` (None when it does not exist); read from the
        log by delta-rs for local path tables (no Spark job), from history otherwise."""
        from laion_spark.storage import is_local

        if not self.database and is_local(self.location(name)):
            from deltalake import DeltaTable

            try:
                return int(DeltaTable(self.location(name)).version())
            except Exception:  # not a Delta table (yet)
                return None
        if not self.exists(name):
            return None
        hist = self.delta(name).history(1).select("version").collect()
        return int(hist[0]["version"]) if hist else 0

    def data_version(self, name: str) -> int | None:
        """The newest Delta version whose commit changed `name`'s rows or schema (None when
        the table does not exist). OPTIMIZE (`dataChange` false) and VACUUM's start/end
        commits move the version without changing a row; digests of what was read (export,
        curate) use this one, so such commits do not make later work look new."""
        current = self.version(name)
        if current is None or self.database:
            return current  # catalog tables: the log's location is the catalog's business
        return last_data_change(self.location(name), current)

    def counts(self) -> list[dict]:
        """Each existing table: name, location, row count, Delta version."""
        out = []
        for name in SPECS:
            if not self.exists(name):
                continue
            out.append(
                {
                    "table": name,
                    "rows": self.read(name).count(),
                    "version": self.version(name),
                    "location": self.location(name),
                }
            )
        return out


class TableConflictError(RuntimeError):
    """Another writer kept committing to the table first (Delta optimistic concurrency)."""


# Delta's commit-conflict exceptions (Python classes in delta.exceptions; the Java names
# match what a plain Py4JJavaError carries, e.g. a racing first commit of a new table)
_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "ConcurrentWriteException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DeltaConcurrentModificationException",
)


# how far back data_version walks the log before it takes the version it stands on
_DATA_VERSION_WALK = 200


def last_data_change(location: str, current: int) -> int:
    """Walk the Delta log of the table at `location` back from version `current` to the
    newest commit that adds or removes data (`dataChange`) or changes the schema. A commit
    file that cannot be read (log cleaned up) counts as a change: never claim more."""
    import json

    from laion_spark.storage import fs_path, join

    fs, log_dir = fs_path(join(location, "_delta_log"))
    for v in range(current, max(-1, current - _DATA_VERSION_WALK), -1):
        try:
            with fs.open(f"{log_dir}/{v:020d}.json", "rb") as f:
                lines = f.read().splitlines()
        except (FileNotFoundError, OSError):
            return v
        for line in lines:
            action = json.loads(line) if line.strip() else {}
            if "metaData" in action:
                return v
            for kind in ("add", "remove"):
                if kind in action and action[kind].get("dataChange", True):
                    return v
    return max(0, current - _DATA_VERSION_WALK + 1)


def _conflict_name(e: BaseException) -> str | None:
    """The Delta conflict `e` is (its class name), or None when it is some other error."""
    if type(e).__name__ == "CommitFailedError":  # delta-rs (upsert_local): lost the commit
        return f"CommitFailedError: {str(e)[:200]}"
    for cls in type(e).__mro__:
        if cls.__name__ in _CONFLICTS:
            return cls.__name__
    text = str(e)
    for name in _CONFLICTS:
        if name in text.split("\n", 1)[0] or f"delta.exceptions.{name}" in text:
            return name
    if "FileAlreadyExistsException" in text and "_delta_log" in text:
        return "FileAlreadyExistsException (a concurrent commit of the same version)"
    return None


def _key_condition(keys: Iterable[str]) -> str:
    # null-safe equality: a key column may legitimately be null (e.g. index_ids.shard)
    return " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)


_METRICS = ("num_affected_rows", "num_updated_rows", "num_deleted_rows", "num_inserted_rows")


def _metrics(result: DataFrame | None) -> dict[str, int]:
    """Delta's MERGE metrics row as a dict of ints (zeros when nothing ran)."""
    row = result.first() if result is not None else None
    got = row.asDict() if row is not None else {}
    return {k: int(got.get(k) or 0) for k in _METRICS}
