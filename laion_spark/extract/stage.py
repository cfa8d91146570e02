"""Extract stage: WAT/WARC files -> `candidates` (+ per-file `extract_stats`).

One Spark task per input file streams it with fastwarc (bounded memory), applies the
LAION rules (laion_spark.extract.pairs) and yields pairs plus one stats row; a few local
files into local tables are read in this process instead (extract/local.py, the same
rows). One row per sample (or per URL) is kept, the first seen in file order. Files that
already have a non-failed `extract_stats` row are skipped (incremental; an ARC file's
`unsupported_format` is final too); candidates are MERGEd on sample_id (idempotent: a re-run
inserts nothing new). A run given no input, or whose every file failed, returns a
StageResult with `error` set (the CLI exits 1).
"""

from __future__ import annotations

import time
from collections import Counter

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import Config
from laion_spark.extract.inputs import expand_inputs
from laion_spark.extract.reader import STATUS_UNSUPPORTED
from laion_spark.stage import StageResult
from laion_spark.tables import SPECS, Tables, spark_schema
from laion_spark.takedown.rules import exclude_taken_down

# What one task emits, one schema for both kinds of rows: pair rows (kind="pair": the
# candidates columns of PAIR_COLS) and one stats row per file (kind="stats": STATS_COLS of
# extract_stats). Types come from SPECS; only the order is ours.
# PAIR_COLS is the order reader.RowFormat (and the compiled WAT path) builds a pair's tuple in:
# the Pair fields up to `license`, then the file's provenance.
PAIR_COLS = [
    "sample_id",
    "url",
    "text",
    "page_url",
    "language",
    "language_score",
    "language_group",
    "license",
    "source_file",
    "source_offset",
    "crawl_id",
    "source_format",
]
STATS_COLS = [f.name for f in SPECS["extract_stats"].schema.fields if f.name != "finished_at"]
_STATS_ONLY = [c for c in STATS_COLS if c not in PAIR_COLS]
ROW_SCHEMA = T.StructType(
    [
        T.StructField("kind", T.StringType(), True),
        *spark_schema("candidates", PAIR_COLS).fields,
        *spark_schema("extract_stats", _STATS_ONLY).fields,
    ]
)
ROW_NAMES = ROW_SCHEMA.fieldNames()


def _format_of(path: str) -> str:
    return "wat" if ".wat" in path.rsplit("/", 1)[-1] else "warc"


def row_format(path: str):
    """The pair rows of one file in ROW_SCHEMA order (reader.RowFormat)."""
    from laion_spark.extract.reader import RowFormat

    fmt = _format_of(path)
    pad = (None,) * len(_STATS_ONLY)  # a pair row leaves the stats columns empty
    return RowFormat(("pair",), lambda offset, crawl_id: (path, offset, crawl_id, fmt, *pad))


def file_rows(path: str, options: dict):
    """Rows (tuples in ROW_SCHEMA order) for one file: its pairs, then its stats row."""
    from laion_spark.extract.reader import FileStats, iter_file

    fmt = _format_of(path)
    for item in iter_file(path, options, row_format(path)):
        if isinstance(item, FileStats):
            d = item.as_dict()
            row = dict.fromkeys(ROW_NAMES)
            row.update({k: d[k] for k in _STATS_ONLY})
            row.update(kind="stats", source_file=path, crawl_id=d["crawl_id"], source_format=fmt)
            yield tuple(row[n] for n in ROW_NAMES)
        else:
            yield item


def _done_files(tables: Tables) -> set[str]:
    if not tables.exists("extract_stats"):
        return set()
    if tables.local("extract_stats"):  # read here (delta-rs): a re-run costs no Spark job
        from laion_spark.lake import read_rows

        got = read_rows(tables.location("extract_stats"), ["source_file", "status"]).to_pydict()
        return {
            f
            for f, st in zip(got["source_file"], got["status"], strict=True)
            if st not in (None, "failed")
        }
    rows = tables.read("extract_stats").where("status <> 'failed'").select("source_file")
    return {r[0] for r in rows.collect()}


def _first_seen(tables: Tables, pairs: DataFrame, dedup_by_url: bool) -> DataFrame:
    """One row per sample_id (with `dedup_by_url`, LAION-5B style, one per URL, and a URL
    already in `candidates` is not added again): the first seen in (file, offset, sample_id)
    order, so which file a sample's provenance names does not depend on the engine or the
    partitioning (the WAT and WARC of one crawl yield the same pairs)."""
    key = "url" if dedup_by_url else "sample_id"
    w = Window.partitionBy(key).orderBy("source_file", "source_offset", "sample_id")
    first = pairs.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")
    if dedup_by_url and tables.exists("candidates"):
        first = first.join(tables.read("candidates").select("url").distinct(), "url", "left_anti")
    return first


def _run_spark(spark: SparkSession, cfg: Config, tables: Tables, files: list[str]):
    """One Spark task per file; (stats rows, pairs read, rows inserted)."""
    ex = cfg.extract
    options = ex.to_options()
    rdd = spark.sparkContext.parallelize(files, len(files)).flatMap(lambda p: file_rows(p, options))
    rows = spark.createDataFrame(rdd, ROW_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        stats = rows.where("kind = 'stats'").select(*STATS_COLS)
        stat_rows = stats.collect()  # the job that reads the files (rows are persisted)
        # every pair row a file yielded is counted in its stats row
        n_pairs = sum(int(r["pairs"] or 0) for r in stat_rows)
        pairs = rows.where("kind = 'pair'").select(*PAIR_COLS)
        kept = exclude_taken_down(tables, _first_seen(tables, pairs, ex.dedup_by_url))
        out = kept.withColumn("extracted_at", F.current_timestamp())
        # insert-only: the first file a sample came from stays its provenance on re-runs
        got = tables.upsert(out, "candidates", update=False, dedup=False)  # keys are unique
        inserted = got["num_inserted_rows"]
        tables.upsert(stats.withColumn("finished_at", F.current_timestamp()), "extract_stats")
    finally:
        rows.unpersist()
    return stat_rows, n_pairs, inserted


def run(
    spark: SparkSession,
    cfg: Config,
    tables: Tables,
    inputs: list[str] | None = None,
    reprocess: bool = False,
) -> StageResult:
    """Extract pairs from WAT/WARC files (default: cfg.extract.inputs) into `candidates`."""
    t0 = time.time()
    ex = cfg.extract
    given = list(inputs if inputs is not None else ex.inputs)
    if not given:
        return StageResult(
            "extract",
            notes={"files": 0, "skipped_files": 0},
            seconds=time.time() - t0,
            error="no input files: set extract.inputs in the config (WAT/WARC files or "
            "*.paths.gz listings) or pass them: laion-spark run extract --inputs FILE ...",
        )
    try:
        files = expand_inputs(given, ex.listing_prefix)
    except Exception as e:  # a listing that cannot be read: say which, do not crash
        return StageResult(
            "extract",
            notes={"files": 0, "skipped_files": 0},
            seconds=time.time() - t0,
            error=f"cannot read an input listing: {type(e).__name__}: {e}"[:500],
        )
    skipped = 0
    if not reprocess:
        done = _done_files(tables)
        skipped = sum(1 for f in files if f in done)
        files = [f for f in files if f not in done]
    if not files:
        error = None
        if not skipped:  # listings that expanded to nothing
            error = f"the inputs name no file to extract (listings are empty): {given[:3]}"
        return StageResult(
            "extract",
            notes={"files": 0, "skipped_files": skipped},
            seconds=time.time() - t0,
            error=error,
        )
    from laion_spark.extract import local

    engine = "local" if local.wants_local(cfg, tables, files) else "spark"
    if engine == "local":
        stat_rows, n_pairs, inserted = local.run_local(cfg, tables, files)
    else:
        stat_rows, n_pairs, inserted = _run_spark(spark, cfg, tables, files)
    by_status: Counter = Counter()
    for r in stat_rows:
        for k, v in (r["rejected"] or {}).items():
            by_status[f"rejected:{k}"] += v
        for k, v in (r["errors"] or {}).items():
            by_status[f"error:{k}"] += v
    by_status["inserted"] = inserted
    by_status["not_inserted"] = n_pairs - inserted
    failed = [r for r in stat_rows if r["status"] in ("failed", STATUS_UNSUPPORTED)]
    error = None
    if failed and len(failed) == len(stat_rows):
        first = failed[0]
        error = (
            f"all {len(failed)} input file(s) failed, none was read; first: "
            f"{first['source_file']}: {first['error_message']} (details per file in the "
            "extract_stats table)"
        )[:1000]
    return StageResult(
        "extract",
        rows_in=n_pairs,
        rows_out=inserted,
        by_status=dict(by_status),
        seconds=time.time() - t0,
        notes={
            "files": len(files),
            "skipped_files": skipped,
            "failed_files": sum(1 for r in stat_rows if r["status"] == "failed"),
            "unsupported_files": sum(1 for r in stat_rows if r["status"] == STATUS_UNSUPPORTED),
            "bad_records": sum(r["bad_records"] or 0 for r in stat_rows),
            "engine": engine,
        },
        error=error,
    )


from laion_spark.extract.importer import import_metadata  # noqa: E402,F401  (public API)
