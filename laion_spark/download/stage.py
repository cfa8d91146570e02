"""Download stage: `candidates` -> `images`, one row per sample with a status.

    from laion_spark.download.stage import run
    result = run(spark, cfg, tables)                     # new candidates only
    result = run(spark, cfg, tables, retry_failed=True)  # + retryable failures again

Work is cut into commits of `download.rows_per_commit` samples; each commit is one
mapInArrow pass (threads inside every task) and one MERGE into `images`. A crash loses at
most the chunk in flight, and the next run picks up exactly the samples with no row yet.
"""

from __future__ import annotations

import time

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.config import Config
from laion_spark.download.worker import OUTPUT_COLUMNS, RETRYABLE_STATUSES, download_partition
from laion_spark.stage import StageResult
from laion_spark.tables import Tables, spark_schema
from laion_spark.takedown.rules import exclude_taken_down, taken_down_hashes

_SPARK_SCHEMA = spark_schema("images", OUTPUT_COLUMNS)


def todo(tables: Tables, retry_failed: bool = False) -> DataFrame:
    """(sample_id, url) of candidates to download now: never tried, or (retry_failed)
    tried with a retryable failure; taken-down URLs/domains/samples excluded."""
    cands = tables.read("candidates").select("sample_id", "url").dropDuplicates(["sample_id"])
    pending = tables.pending(cands, "images")
    if retry_failed and tables.exists("images"):
        failed = (
            tables.read("images")
            .where(F.col("status").isin(*RETRYABLE_STATUSES))
            .select("sample_id")
        )
        pending = pending.unionByName(cands.join(failed, "sample_id", "left_semi"))
    return exclude_taken_down(tables, pending)


def _download(
    df: DataFrame, cfg: Config, sha: frozenset[str], md5: frozenset[str], partitions: int
) -> DataFrame:
    dc = cfg.download

    def fn(batches):
        yield from download_partition(batches, dc, sha, md5)

    return (
        df.repartition(partitions)
        .mapInArrow(fn, _SPARK_SCHEMA)
        .withColumn("downloaded_at", F.current_timestamp())
    )


def run(
    spark, cfg: Config, tables: Tables, retry_failed: bool = False, limit: int | None = None
) -> StageResult:
    """Download pending candidates into `images`. `limit` caps samples this run (demos)."""
    t0 = time.time()
    dc = cfg.download
    retry_failed = retry_failed or dc.retry_failed
    if not retry_failed:
        from laion_spark.status import nothing_to_do

        # nothing pending: said from the Delta tables (local ones: no Spark job), before a
        # fetch job with no rows starts its Python workers (10 s in the demo's re-run)
        idle = nothing_to_do(cfg, "download", {})
        if idle:
            notes = {"commits": 0, "pending": 0, "idle": idle}
            return StageResult("download", 0, 0, {}, time.time() - t0, notes)
    sha, md5 = taken_down_hashes(tables)
    sha_f, md5_f = frozenset(sha), frozenset(md5)
    partitions = dc.partitions or max(1, 2 * spark.sparkContext.defaultParallelism)
    by_status: dict[str, int] = {}
    rows = commits = 0  # every sample taken gets exactly one row: rows in == rows out
    fetch_s = merge_s = 0.0
    retried: set[str] = set()
    while limit is None or rows < limit:
        want = dc.rows_per_commit if limit is None else min(dc.rows_per_commit, limit - rows)
        chunk = todo(tables, retry_failed)
        if retried:
            # a retried sample that failed again must not be picked up again in this run
            chunk = (
                chunk.where(~F.col("sample_id").isin(*retried)) if len(retried) < 10_000 else chunk
            )
        t_fetch = time.time()
        # materialise once: MERGE may scan its source twice, and a second scan would
        # re-fetch. The chunk itself is not materialised: its anti-join runs inside this
        # one job, and every count below is read from the checkpointed output.
        out = _download(chunk.limit(want), cfg, sha_f, md5_f, partitions).localCheckpoint(
            eager=True
        )
        counts = out.groupBy("status").count().collect()
        n = sum(int(r["count"]) for r in counts)
        t_merge = time.time()
        fetch_s += t_merge - t_fetch
        if n == 0:
            break
        # never-tried samples cannot have a row yet (the anti-join in todo), so an
        # insert-only MERGE suffices; chunk keys are unique (todo deduplicates them)
        tables.upsert(out, "images", update=retry_failed, dedup=False)
        merge_s += time.time() - t_merge
        for r in counts:
            by_status[r["status"]] = by_status.get(r["status"], 0) + int(r["count"])
        if retry_failed:
            retried.update(r["sample_id"] for r in out.select("sample_id").collect())
            if len(retried) >= 10_000:
                retry_failed = False  # big retry sets: one pass over the failures is enough
        rows += n
        commits += 1
        if n < want:
            break
    return StageResult(
        "download",
        rows_in=rows,
        rows_out=rows,
        by_status=by_status,
        seconds=time.time() - t0,
        notes={
            "commits": commits,
            "partitions": partitions,
            "fetch_s": round(fetch_s, 1),  # fetch+resize (the mapInArrow pass)
            "merge_s": round(merge_s, 1),  # Delta MERGE into images
        },
    )
